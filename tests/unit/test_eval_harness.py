"""The multiple-choice path of `karma eval`: the log-likelihood scorer against a hand-computed
forward, lm-eval's request building and metrics through our ScoringLM, and TruthfulQA MC1/MC2
against lm-evaluation-harness's own task definitions on the same items and model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from karma_ray.eval.harness import ScoringLM, evaluate_multiple_choice, mc2_score
from karma_ray.eval.tasks import TaskSpec, load_task_specs

REPO = Path(__file__).resolve().parents[2]
EVAL_DATA = REPO.parent / "shared" / "data" / "eval"


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.fixture(scope="module")
def tiny_lm(workers_tiny_llama):
    return workers_tiny_llama  # conftest's tiny random Llama (hidden 32, 2 layers, 300-token BPE)


@pytest.fixture(scope="module")
def scorer(tiny_lm):
    from karma_ray.engines.scorer import LogprobScorer

    return LogprobScorer(str(tiny_lm), micro_batch_size=3, num_threads=1)


def test_mc2_is_the_normalized_mass_on_true_answers_without_underflow():
    ll, labels = [-1.0, -2.0, -3.0], [1, 0, 1]
    expected = (math.exp(-1) + math.exp(-3)) / (math.exp(-1) + math.exp(-2) + math.exp(-3))
    assert mc2_score(ll, labels) == pytest.approx(expected, abs=1e-12)
    # exp(-1000) underflows to 0 in float64: the naive formula gives 0/0; the shifted one 1/(1+e^-1).
    assert mc2_score([-1000.0, -1001.0], [1, 0]) == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-12)
    with pytest.raises(ValueError):
        mc2_score([-1.0], [1, 0])


def test_continuation_logprobs_match_a_plain_forward_per_pair(scorer):
    module = scorer.module
    # ([20], [21]) and ([20], [22]) share one forward (same model input); so do the two [40, 41] rows
    pairs = [([5, 6, 7, 8, 9, 10], [11, 12]), ([20], [21]), ([30, 31, 32], [33, 34, 35, 36]), ([40, 41], [42]),
             ([20], [22]), ([40, 41], [43])]
    got = scorer.continuation_logprobs(pairs, max_length=64, max_batch_tokens=12)  # several padded batches
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logprobs = torch.log_softmax(module(input_ids=ids).logits[0].float(), -1)
        positions = range(len(ctx) - 1, len(ctx) + len(cont) - 1)
        expected = sum(float(logprobs[p, t]) for p, t in zip(positions, cont))
        assert ll == pytest.approx(expected, abs=1e-4)
        assert greedy == all(int(logprobs[p].argmax()) == t for p, t in zip(positions, cont))


def test_a_prefix_shared_by_every_input_is_run_once_with_the_same_logprobs(scorer):
    from karma_ray.engines.scorer import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7], [8]]) == 0
    module = scorer.module
    primer = [9, 30, 31, 32, 33, 34, 35]  # a few-shot primer every request starts with
    pairs = [(primer + [40, 41], [42, 43]), (primer + [40, 41], [44]), (primer + [50], [51, 52, 53]),
             (primer, [60]), (primer + [70, 71, 72, 73], [74])]
    calls = []
    forward = module.forward
    module.forward = lambda *a, **kw: calls.append(kw["input_ids"].shape) or forward(*a, **kw)
    try:
        got = scorer.continuation_logprobs(pairs, max_length=64, max_batch_tokens=8)  # several batches
    finally:
        del module.forward
    # one forward of the primer but its last token (whose logits score the request (primer, [60]));
    # each batch then runs only its rows' remaining tokens
    assert calls[0] == (1, 6) and all(shape[1] <= 6 for shape in calls[1:]) and len(calls) > 2
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        with torch.no_grad():
            logprobs = torch.log_softmax(module(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
        positions = range(len(ctx) - 1, len(ctx) + len(cont) - 1)
        assert ll == pytest.approx(sum(float(logprobs[p, t]) for p, t in zip(positions, cont)), abs=1e-4)
        assert greedy == all(int(logprobs[p].argmax()) == t for p, t in zip(positions, cont))


def test_a_greedy_continuation_is_reported_greedy_and_long_contexts_lose_their_start(scorer):
    module = scorer.module
    ctx = [7, 8, 9]
    with torch.no_grad():
        nxt = int(module(input_ids=torch.tensor([ctx])).logits[0, -1].argmax())
    (_, greedy), = scorer.continuation_logprobs([(ctx, [nxt])], max_length=64)
    assert greedy
    # max_length=4 keeps the last 4 tokens of (context + continuation)[:-1], as lm-eval's HF model does
    long_ctx, cont = list(range(50, 60)), [61, 62]
    (cut, _), = scorer.continuation_logprobs([(long_ctx, cont)], max_length=4)
    (ref, _), = scorer.continuation_logprobs([(long_ctx[-3:], cont)], max_length=64)
    assert cut == pytest.approx(ref, abs=1e-5)


def _rule_scorer(pairs):
    """log p = -(number of continuation tokens) - 0.01 * last token id: a known answer per item."""
    return [(-float(len(cont)) - 0.01 * cont[-1], False) for _, cont in pairs]


class _CharTokenizer:
    eos_token_id, bos_token_id = 0, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_lm_eval_builds_requests_and_metrics_we_can_compute_by_hand():
    spec = TaskSpec(task="toy", group="pragmatics", kind="multiple_choice", description="toy", loader="-",
                    prompt="Q: {{question}}\nA:", choices="choices", target="gold", metric="acc")
    docs = [{"id": "a", "question": "x", "choices": ["yy", "z"], "gold": 1},  # 'z' is shorter: the rule picks it
            {"id": "b", "question": "y", "choices": ["ab", "cd", "e"], "gold": 0},
            {"id": "c", "question": "z", "choices": ["c", "b"], "gold": 1}]  # same length: lower first char wins
    seen = []

    def recording(pairs):
        seen.extend(pairs)
        return _rule_scorer(pairs)

    items = evaluate_multiple_choice(ScoringLM(_CharTokenizer(), recording, 64), [(spec, docs, None)], seed=0)["toy"]
    assert [(i.item_id, i.value) for i in items] == [("a", 1.0), ("b", 0.0), ("c", 1.0)]
    assert [i.answer for i in items] == [" z", " e", " b"]  # the argmax choice, as lm-eval sent it
    # 7 requests; the context/continuation split keeps the delimiter with the continuation
    assert len(seen) == 7 and ([ord(c) for c in "Q: x\nA:"], [ord(c) for c in " yy"]) in seen


def test_mc2_and_few_shot_by_field_through_lm_eval():
    spec = TaskSpec(task="toy_mc2", group="factuality", kind="multiple_choice", description="toy", loader="-",
                    prompt="{{question}}", choices="mc2_choices", target="0", metric="mc2")
    docs = [{"id": "q", "question": "?", "mc2_choices": ["a", "bb", "c"], "mc2_labels": [1, 0, 1]}]
    items = evaluate_multiple_choice(ScoringLM(_CharTokenizer(), _rule_scorer, 64), [(spec, docs, None)], seed=0)
    ll = [-2 - 0.01 * ord("a"), -3 - 0.01 * ord("b"), -2 - 0.01 * ord("c")]  # continuations " a", " bb", " c"
    assert items["toy_mc2"][0].value == pytest.approx(mc2_score(ll, [1, 0, 1]), abs=1e-12)

    shots = TaskSpec(task="toy_shots", group="knowledge", kind="multiple_choice", description="toy", loader="-",
                     prompt="{{q}}:", choices=("A", "B"), target="gold", num_fewshot=1, fewshot_split="dev",
                     fewshot_sampler="first_n", fewshot_by="subject", preamble="About {{subject}}.\n\n")
    docs = [{"id": "1", "subject": "cats", "q": "c1", "gold": 0}, {"id": "2", "subject": "dogs", "q": "d1", "gold": 1}]
    dev = [{"id": "s1", "subject": "dogs", "q": "dshot", "gold": 1}, {"id": "s2", "subject": "cats", "q": "cshot", "gold": 0}]
    seen = []

    def recording(pairs):
        seen.extend("".join(map(chr, ctx)) for ctx, _ in pairs)
        return _rule_scorer(pairs)

    evaluate_multiple_choice(ScoringLM(_CharTokenizer(), recording, 256), [(shots, docs, dev)], seed=0)
    assert "About cats.\n\ncshot: A\n\nc1:" in seen and "About dogs.\n\ndshot: B\n\nd1:" in seen


def test_specs_load_and_bad_specs_are_named(tmp_path):
    from karma_ray.eval.tasks import TaskError

    specs = load_task_specs(["humor", "truthfulqa_mc2", "mmlu"])
    assert [s.group for s in specs] == ["pragmatics", "factuality", "knowledge"]
    with pytest.raises(TaskError, match="unknown task 'humour'.*did you mean 'humor'"):
        load_task_specs(["humour"])
    (tmp_path / "bad.yaml").write_text("task: bad\ngroup: pragmatics\nkind: multiple_choice\ndescription: x\nloader: x\nchoises: [a]\n")
    with pytest.raises(TaskError, match="unknown key 'choises'.*did you mean 'choices'"):
        load_task_specs(["bad"], extra_dirs=[tmp_path])


@pytest.mark.skipif(not EVAL_DATA.exists(), reason=f"shared data not found: {EVAL_DATA}")
def test_truthfulqa_mc1_mc2_agree_with_lm_eval_builtin_tasks(scorer, tiny_lm, tmp_path):
    """Our specs (over the original mc_task.json) against lm-eval's truthfulqa_mc1/mc2 YAMLs (over
    the same items in the HF layout, true answers first as the HF dataset has them), one model."""
    import lm_eval
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    from karma_ray.eval.loaders import load_split
    from karma_ray.models.hf import load_tokenizer

    docs = load_split("truthfulqa", EVAL_DATA, "validation").docs[:12]
    lm = ScoringLM(load_tokenizer(str(tiny_lm)), lambda pairs: scorer.continuation_logprobs(pairs, max_length=2048), 2048)
    ours = evaluate_multiple_choice(lm, [(s, docs, None) for s in load_task_specs(["truthfulqa_mc1", "truthfulqa_mc2"])], seed=0)

    with open(tmp_path / "tqa.jsonl", "w") as f:
        for d in docs:
            mc1 = [d["mc1_choices"][d["mc1_gold"]]] + [c for i, c in enumerate(d["mc1_choices"]) if i != d["mc1_gold"]]
            order = sorted(range(len(d["mc2_labels"])), key=lambda i: -d["mc2_labels"][i])  # stable: true first
            f.write(json.dumps({"question": d["question"],
                                "mc1_targets": {"choices": mc1, "labels": [1] + [0] * (len(mc1) - 1)},
                                "mc2_targets": {"choices": [d["mc2_choices"][i] for i in order],
                                                "labels": [d["mc2_labels"][i] for i in order]}}) + "\n")
    builtin = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    for n in ("mc1", "mc2"):
        (tmp_path / f"ref_{n}.yaml").write_text(
            f"include: {builtin}/truthfulqa_{n}.yaml\ntask: ref_{n}\ntag: null\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {tmp_path}/tqa.jsonl\n")
    loaded = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["ref_mc1", "ref_mc2"])
    ref = evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True, verbosity="ERROR")
    for n in ("mc1", "mc2"):
        theirs = [float(s["acc"]) for s in sorted(ref["samples"][f"ref_{n}"], key=lambda s: s["doc_id"])]
        mine = [i.value for i in ours[f"truthfulqa_{n}"]]
        assert len(mine) == len(theirs) == 12
        assert max(abs(a - b) for a, b in zip(mine, theirs)) < 1e-6
    assert len({round(v, 6) for v in mine}) > 6  # real, varied numbers (not all 0 or 1)
