"""`karma experiment` without a cluster: the plan (every stage config, linked and validated), the digest
chain that decides what a rerun skips, the cache markers, and the report's statistics and rendering."""

import json
import math
from pathlib import Path

import pytest

from karma_ray.config import ConfigError, load_config
from karma_ray.experiment.config import ExperimentConfig
from karma_ray.experiment.report import build_results, fisher_ci, findings, wilson_ci, write_report
from karma_ray.experiment.run import ExperimentError, Step, StageLog, is_done, mark_done, plan_experiment, ppo_summary
from karma_ray.stage import begin_stage, finish_stage

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "experiment" / "tiny.yaml"


def plan(tmp_path, *overrides):
    return plan_experiment(load_config(ExperimentConfig, TINY, list(overrides)), tmp_path / "exp")


def plan_plus(tmp_path, section, override):
    """The tiny plan with one more override appended to one stage section's list."""
    from dataclasses import replace

    cfg = load_config(ExperimentConfig, TINY)
    part = getattr(cfg, section)
    cfg = replace(cfg, **{section: replace(part, overrides=(*part.overrides, override))})
    return plan_experiment(cfg, tmp_path / "exp")


def test_plan_links_every_stage(tmp_path):
    p = plan(tmp_path)
    out = tmp_path / "exp"
    # 3 variants x 2 conditions x 1 seed
    assert [c.name for c in p.cells] == ["text-exposure-s0", "text-base-s0", "text_meta-exposure-s0", "text_meta-base-s0",
                                         "constant-exposure-s0", "constant-base-s0"]
    assert p.rm.search.variants == ("text", "text_meta", "constant") and p.rm.search.asha is False
    assert p.rm.rm.model.backbone == str(out / "models" / "rm_backbone")
    assert p.sft.model.path == str(out / "models" / "policy")
    exp, base = p.ppo["text_meta-exposure-s0"], p.ppo["text_meta-base-s0"]
    assert exp.model.policy == str(out / "sft" / "model") and base.model.policy == str(out / "models" / "policy")
    assert exp.reward.models[0].path == str(out / "rm" / "best" / "text_meta")
    assert exp.prompts.path == str(out / "prepared") and exp.run.iterations == 8
    assert p.eval.karma.reward_model == str(out / "rm" / "best" / "text")  # the judge
    assert [m.partition("=")[0] for m in p.eval_models] == ["base", "sft", *[c.name for c in p.cells]]
    assert len({s.digest for s in p.steps.values()}) == len(p.steps) == 5 + 6 + 1  # corpus..sft, 6 cells, eval


def test_a_change_reruns_exactly_what_is_downstream(tmp_path):
    before = {k: s.digest for k, s in plan(tmp_path).steps.items()}
    ppo = {k: s.digest for k, s in plan_plus(tmp_path, "ppo", "run.iterations=9").steps.items()}
    assert {k for k in before if before[k] != ppo[k]} == {k for k in before if k.startswith("ppo/")} | {"eval"}
    rm = {k: s.digest for k, s in plan_plus(tmp_path, "rm", "train.epochs=3").steps.items()}
    assert {k for k in before if before[k] != rm[k]} == {"rm", "eval"} | {k for k in before if k.startswith("ppo/")}
    sft = {k: s.digest for k, s in plan_plus(tmp_path, "exposure", "train.max_steps=61").steps.items()}
    changed = {k for k in before if before[k] != sft[k]}
    assert changed == {"sft", "eval"} | {k for k in before if k.startswith("ppo/") and "-exposure-" in k}


def test_seeds_and_conditions_multiply_the_cells(tmp_path):
    p = plan(tmp_path, "ppo.seeds=[0,1,2]", "exposure.conditions=[base]")
    assert len(p.cells) == 3 * 3 and p.sft is None
    assert {c.condition for c in p.cells} == {"base"} and "sft" not in p.steps


def test_the_constant_control_gets_its_own_seeds_and_no_cell_writes_a_final_checkpoint(tmp_path):
    p = plan(tmp_path, "ppo.seeds=[0,1]", "ppo.constant_seeds=[0]", "exposure.conditions=[base]")
    assert [c.name for c in p.cells] == ["text-base-s0", "text-base-s1", "text_meta-base-s0", "text_meta-base-s1",
                                         "constant-base-s0"]
    assert all(cfg.run.final_checkpoint is False for cfg in p.ppo.values())
    assert len(plan(tmp_path, "ppo.seeds=[0,1]", "exposure.conditions=[base]").cells) == 3 * 2  # empty: ppo.seeds


def test_ppo_variants_choose_the_cells_and_every_rm_is_still_trained(tmp_path):
    p = plan(tmp_path, "ppo.variants=[constant, text]")
    assert [c.name for c in p.cells] == ["text-exposure-s0", "text-base-s0", "constant-exposure-s0", "constant-base-s0"]
    assert p.rm.search.variants == ("text", "text_meta", "constant")
    assert [m.partition("=")[0] for m in p.eval_models] == ["base", "sft", *[c.name for c in p.cells]]


@pytest.mark.parametrize("override,message", [
    ("rm.variants=[text, karma]", "unknown ['karma']"),
    ("rm.judge=response", "not one of rm.variants"),
    ("rm.judge=constant", "is a control"),
    ("ppo.seeds=[1,1]", "distinct"),
    ("ppo.constant_seeds=[0,0]", "constant_seeds must be distinct"),
    ("exposure.conditions=[exposure, exposure]", "at most once"),
    ("ppo.variants=[text, response]", "ppo.variants ['response'] are not trained"),
    ("ppo.variants=[text, text]", "names a variant twice"),
])
def test_bad_config_is_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(ExperimentConfig, TINY, [override])


def test_bad_inputs_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ExperimentError, match="do not exist"):
        plan(tmp_path, "corpus.synthetic_comments=0", f"corpus.inputs=[{tmp_path / 'nope'}]")
    with pytest.raises(ExperimentError, match="PPO cell text-exposure-s0 cannot fit the local cluster of 2 CPUs.*CPU: needs 2.75"):
        plan_plus(tmp_path, "ppo", "policy.cpus_per_worker=1.5")  # 1.5 + 0.25 x 3 + 0.5 > 2 - 0.1
    with pytest.raises(ExperimentError, match="not a file"):
        plan(tmp_path, f"ppo.prompts={tmp_path / 'prompts.jsonl'}")
    with pytest.raises(ExperimentError, match="rm.config.*unknown"):
        plan_plus(tmp_path, "rm", "train.epochz=3")
    with pytest.raises(ExperimentError, match="models.rm_backbone: unknown packaged model 'minilm-l7'"):
        plan(tmp_path, "models.rm_backbone=packaged:minilm-l7")
    assert not (tmp_path / "exp").exists()  # nothing was written


def test_cache_marker_needs_the_digest_and_a_finished_stage(tmp_path):
    step = Step("rm", tmp_path / "rm", "abc")
    step.folder.mkdir()
    assert not is_done(step)
    begin_stage(step.folder, "sweep-rm", "d")
    mark_done(step)
    assert not is_done(step)  # the stage's own record still says running (killed mid-way)
    finish_stage(step.folder, "sweep-rm", "d")
    assert is_done(step)
    assert not is_done(Step("rm", step.folder, "other"))  # another config: stale
    plain = Step("corpus", tmp_path / "corpus", "x")  # a stage without a record of its own
    plain.folder.mkdir()
    mark_done(plain)
    assert is_done(plain)


def test_ppo_summary_hand_computed(tmp_path):
    rewards = [0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 1.0]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "reward_mean": r, "kl": 0.01 * i}) + "\n"
                                                   for i, r in enumerate(rewards)))
    s = ppo_summary(tmp_path)
    # tail = the last quarter (2 iterations): 0.8, 1.0 -> mean 0.9, sd 0.1414, se 0.1
    assert s["iterations"] == 8 and s["reward_first"] == 0.1 and s["reward_last"] == 1.0
    assert s["reward_tail_mean"] == pytest.approx(0.9) and s["reward_tail_se"] == pytest.approx(0.1)
    assert s["kl_max"] == pytest.approx(0.07)
    assert "gold_first" not in s  # not a synthetic corpus: no gold column, no gold summary
    golds = [0.0, float("nan"), 0.2, 0.2, 0.4, 0.4, 0.3, 0.5]  # a batch with no defined gold logs NaN: left out
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "reward_mean": 0.0, "gold_mean": g}) + "\n"
                                                   for i, g in enumerate(golds)))
    s = ppo_summary(tmp_path)
    # 7 defined values; tail = the last max(2, 7 // 4) = 2: 0.3, 0.5 -> mean 0.4, se 0.1
    assert s["gold_first"] == 0.0 and s["gold_last"] == 0.5
    assert s["gold_tail_mean"] == pytest.approx(0.4) and s["gold_tail_se"] == pytest.approx(0.1)


def test_fisher_and_wilson_intervals_hand_computed():
    lo, hi = fisher_ci(0.5, 28)  # atanh(0.5)=0.5493, se=1/5 -> 0.5493 -+ 0.3920
    assert lo == pytest.approx(math.tanh(0.549306 - 0.391993), abs=1e-5) and hi == pytest.approx(math.tanh(0.549306 + 0.391993), abs=1e-5)
    assert lo == pytest.approx(0.1560, abs=1e-4) and hi == pytest.approx(0.7358, abs=1e-4)
    lo, hi = wilson_ci(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert fisher_ci(None, 100) == (None, None) and fisher_ci(0.3, 3) == (None, None)


def _fake_outputs(p):
    """The files the stages write, with known numbers: RM metrics per variant, eval comparisons."""
    out = p.output
    best = out / "rm" / "best"
    best.mkdir(parents=True)
    accs = {"text": 0.62, "text_meta": 0.70, "constant": 0.5}
    rows = ["variant,loss,lr,best_epoch,model"]
    for v, acc in accs.items():
        (best / f"{v}_metrics.json").write_text(json.dumps({"test": {"spearman": acc - 0.4, "pairwise_accuracy": acc, "n": 400, "n_pairs": 200}}))
        rows.append(f"{v},mse,0.001,1,{best / v}")
    (out / "rm" / "best.csv").write_text("\n".join(rows) + "\n")
    comps = []
    for c in p.cells:
        gain = {"text": 0.3, "text_meta": 0.1, "constant": 0.0}[c.variant]
        for task, metric, delta in (("karma", "reward", gain), ("karma", "gold_quality", gain / 2), ("karma", "length", 1.0),
                                    ("truthfulqa_mc1", "acc", -0.05)):
            comps.append({"baseline": "base", "candidate": c.name, "task": task, "group": task, "metric": metric, "delta": delta,
                          "ci_low": delta - 0.02, "ci_high": delta + 0.02, "p_value": 0.01, "p_holm": 0.02, "test": "permutation", "n": 40})
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "results.json").write_text(json.dumps({"seed": 0, "comparisons": comps, "results": [], "warnings": [],
                                                          "tasks": [{"task": "karma", "metric": "reward", "higher_is_better": True}]}))


def test_report_answers_the_questions_from_the_stage_files(tmp_path):
    p = plan(tmp_path)
    _fake_outputs(p)
    outcomes = {c.name: {"summary": {"iterations": 8, "reward_first": 0.0, "reward_last": 0.2}, "error": ""} for c in p.cells}
    curve = p.output / "ppo" / "text-exposure-s0"
    curve.mkdir(parents=True)
    (curve / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": i, "reward_mean": 0.1 * i, "reward_sem": 0.02, "gold_mean": 0.05 * i, "gold_sem": 0.03, "kl": 0.1, "entropy": 5.0}) + "\n"
        for i in range(1, 5)))
    outcomes["constant-base-s0"] = {"summary": {}, "error": "RuntimeError('node lost')"}
    log = StageLog(ran=["prepare"], skipped=["corpus"], wall_s={"prepare": 3.0})
    results = build_results(p, outcomes, {"prompts": "corpus", "cells": {}}, log)
    assert results["rm"]["text_meta"]["pairwise_accuracy_ci"] == pytest.approx(wilson_ci(0.70, 200))
    assert len(results["downstream"]["text-base-s0"]) == 4
    said = findings(results)
    assert said[0].startswith("Best karma predictor: text_meta")  # 0.70 beats text's 0.62; the control is not a predictor
    assert "largest change text-exposure-s0" in said[1]  # karma reward: text's policies gained most
    assert "CI wholly below 0 in 6 of 6 policies" in said[2]  # truthfulqa fell everywhere in the fixture
    assert "Failed cells (errors in the PPO table): constant-base-s0." in said
    # the fixture's gold is half the proxy gain, CIs +-0.02: the 4 text/text_meta policies rose in both
    assert ("Proxy vs gold: of the 4 policies whose karma reward rose (CI above 0), 4 also rose in gold quality, "
            "0 fell in it (reward hacking), and in 0 the gold change is not clear.") in said
    gold = next(r for r in results["downstream"]["text-base-s0"] if r["metric"] == "gold_quality")
    gold.update(delta=-0.2, ci_low=-0.25, ci_high=-0.15)
    hacked = [line for line in findings(results) if line.startswith("Proxy vs gold")][0]
    assert "3 also rose in gold quality, 1 fell in it (reward hacking)" in hacked
    assert hacked.endswith("Largest fall: text-base-s0, reward +0.300 [+0.280, +0.320] p=0.020*, gold -0.200 [-0.250, -0.150] p=0.020*.")
    gold.update(delta=0.15, ci_low=0.13, ci_high=0.17)
    html, md = write_report(results, p.output)
    text = md.read_text()
    assert "| text-exposure-s0 | 0.620 | +0.300 [+0.280, +0.320] p=0.020* |" in text
    trained = {c["cell"]: c["curve"] for c in results["cells"]}
    assert [r["reward_mean"] for r in trained["text-exposure-s0"]] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert "entropy" not in trained["text-exposure-s0"][0] and trained["text-base-s0"] == []
    for png in ("headline.png", "training.png", "gold.png", "length.png"):
        assert (p.output / png).stat().st_size > 10_000
    assert "node lost" in html.read_text()


def test_findings_say_when_spearman_and_pairwise_accuracy_pick_different_predictors(tmp_path):
    p = plan(tmp_path)
    _fake_outputs(p)
    outcomes = {c.name: {"summary": {}, "error": ""} for c in p.cells}
    results = build_results(p, outcomes, {"prompts": "corpus", "cells": {}}, StageLog(ran=[], skipped=[], wall_s={}))
    assert not any(line.startswith("By Spearman") for line in findings(results))  # the fixture's two rankings agree
    results["rm"]["text"].update(spearman=0.45, spearman_ci=[0.37, 0.52])  # text now ranks first, text_meta still pairs best
    said = findings(results)
    assert said[0].startswith("Best karma predictor: text_meta")
    assert said[1] == ("By Spearman over all held-out replies the best is text (0.450 [0.370, 0.520], "
                       "against text_meta's 0.300 [0.208, 0.387]): the measures disagree.")
    # Fisher: atanh(0.3) = 0.3095 +- 1.96 / sqrt(400 - 3) = +-0.0984 -> tanh(0.2112, 0.4079) = (0.208, 0.387)


def test_pooled_over_seeds_and_head_to_head_hand_computed():
    from karma_ray.experiment.report import pooled_comparisons

    items = ["i1", "i2", "i3", "i4"]
    scores = {("base", "karma", "reward"): dict.fromkeys(items, 0.0)}
    scores[("text-exposure-s0", "karma", "reward")] = dict(zip(items, [1.0, 2.0, 3.0, 4.0]))
    scores[("text-exposure-s1", "karma", "reward")] = dict(zip(items, [3.0, 2.0, 1.0, 0.0]))
    scores[("text_meta-exposure-s0", "karma", "reward")] = dict.fromkeys(items, 0.0)
    scores[("text_meta-exposure-s1", "karma", "reward")] = dict.fromkeys(items[:3], 1.0)  # i4 lost: 3 shared items
    scores[("constant-exposure-s0", "karma", "reward")] = dict.fromkeys(items, 0.0)
    arms = {("text", "exposure"): ["text-exposure-s0", "text-exposure-s1"],
            ("text_meta", "exposure"): ["text_meta-exposure-s0", "text_meta-exposure-s1"],
            ("constant", "exposure"): ["constant-exposure-s0"]}
    pooled, contrasts = pooled_comparisons(scores, arms, [("karma", "reward"), ("humor", "acc")], n_resamples=200, seed=0)
    by = {r["variant"]: r for r in pooled}
    assert set(by) == {"text", "text_meta", "constant"}  # humor was never scored: no row, no error
    # text: seed means are 2 on every item -> delta 2, no spread; the seeds themselves say 2.5 and 1.5
    assert by["text"]["delta"] == pytest.approx(2.0) and by["text"]["ci_low"] == by["text"]["ci_high"] == pytest.approx(2.0)
    assert by["text"]["seed_deltas"] == pytest.approx([2.5, 1.5]) and by["text"]["n"] == 4 and by["text"]["seeds"] == 2
    assert by["text_meta"]["delta"] == pytest.approx(0.5) and by["text_meta"]["n"] == 3
    assert by["constant"]["delta"] == 0.0 and by["constant"]["p_value"] == 1.0
    assert [(c["a"], c["b"], c["n"]) for c in contrasts] == [("text", "text_meta", 3)]  # controls are not contrasted
    assert contrasts[0]["delta"] == pytest.approx(0.5 - 2.0)
