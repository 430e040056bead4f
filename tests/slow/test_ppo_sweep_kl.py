"""`karma sweep-ppo` on CPU: a KL sweep of 3 trials judged by the in-training evaluation, ASHA on.

A tiny random-init Llama, real DeepSpeed/vLLM/Ray actors, a rule reward; every 2 iterations the
live policy is scored on TruthfulQA MC2 (../shared/data/eval). The objective is MC2 minus a KL
penalty, so the grid is ordered from the tightest KL coefficient to none: the later trials drift
further at the same round and ASHA stops at least one of them at a rung."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, need_shared

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
WORDS = "the a cat dog tree house river sky blue green quick slow jump run eat sleep apple mountain happy sad".split()


def test_kl_sweep_stops_a_trial_early_and_writes_the_best_config(ray_cluster, tmp_path):
    from karma_ray.config import load_config
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer
    from karma_ray.rlhf.config import PPOConfig
    from karma_ray.rlhf.sweep import SweepPPOConfig, run_sweep_ppo

    data = need_shared(SHARED_DATA / "eval" / "truthfulqa")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    tok = train_bpe_tokenizer(texts, vocab_size=512)
    policy = save_tiny_llama(tmp_path / "policy", tok, hidden_size=64, num_layers=2, num_heads=2, max_position_embeddings=512)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "Tell me: " + t}) + "\n" for t in texts[:256]))
    ppo = [f"model.policy={policy}", "reward.models=[{path: 'rule:char_fraction:e', name: e_fraction}]",
           "prompts.source=file", f"prompts.path={prompts}", "prompts.max_prompt_tokens=64", "policy.lr=3e-3",
           "critic.lr=3e-3", "rollout.max_new_tokens=16", "rollout.kv_cache_gib=0.25", "run.prompts_per_iteration=32",
           "algo.minibatch_size=32", "eval.data_root=" + str(data.parent)]
    cfg = load_config(SweepPPOConfig, REPO / "configs" / "ppo" / "sweep_kl_tiny.yaml", [
        "ppo_config=" + str(REPO / "configs" / "ppo" / "tiny.yaml"),
        "ppo_overrides=[" + ", ".join(repr(o) for o in ppo + ["run.iterations=8", "run.checkpoint_every=0",
                                                               "run.tensorboard=false", "eval.every_iterations=2",
                                                               "eval.tasks=[truthfulqa_mc2]", "eval.limit=16",
                                                               "eval.max_length=256"]) + "]",
        "search.space={algo.kl_coef: [1.0, 0.1, 0.0]}",
        "search.objective={eval/truthfulqa_mc2/mc2: 1.0, kl: -1.0}",
    ])
    sweep = run_sweep_ppo(cfg, tmp_path / "sweep")

    rows = list(csv.DictReader(open(sweep.results_csv)))
    assert len(rows) == 3 and not any(r["error"] for r in rows), rows
    assert sorted(float(r["algo.kl_coef"]) for r in rows) == [0.0, 0.1, 1.0]
    stopped = [t for t in sweep.trials if t.stopped_early]
    assert stopped, [(t.params, t.objectives) for t in sweep.trials]  # ASHA stopped at least one
    assert max(len(t.objectives) for t in sweep.trials) == 4  # and some trial ran all 4 rounds
    best = load_config(PPOConfig, sweep.best_config)
    assert best.algo.kl_coef == sweep.best.params["algo.kl_coef"] and len(sweep.best.objectives) == 4
    # every trial's objective is what its own metrics.jsonl says at each round
    for t in sweep.trials:
        lines = [json.loads(x) for x in (Path(t.folder) / "metrics.jsonl").read_text().splitlines()]
        evals = [m for m in lines if "eval/truthfulqa_mc2/mc2" in m][:len(t.objectives)]
        assert [round(m["eval/truthfulqa_mc2/mc2"] - m["kl"], 9) for m in evals] == [round(x, 9) for x in t.objectives]
    # the stopped trials' placement groups were released: nothing is left reserved
    from ray.util import placement_group_table

    assert [v["name"] for v in placement_group_table().values() if v["state"] != "REMOVED"] == []
    assert "stopped early" in (sweep.output / "summary.md").read_text()
