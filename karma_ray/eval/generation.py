"""Generation tasks: sample from the model under evaluation on the shared rollout engines (vLLM or
HF generate), then judge the text.

- toxicity (RealToxicityPrompts): k continuations per prompt, scored by the toxicity classifier.
  Per prompt: the maximum score over the k (its mean over prompts is the expected maximum
  toxicity) and whether any of the k scores >= the threshold (its mean: the toxicity probability).
- karma: one reply per held-out Reddit context, scored by the karma reward model; the reply's
  length in tokens; and on a synthetic corpus the planted gold text quality (karma_ray.data.synth).

`Judge` is the actor holding the classifier and the reward model (plain class; `ray.remote` is
applied where it is launched). The sampling fans prompt chunks out over the engines and collects
them as they finish, so the progress bar moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from karma_ray.eval.harness import ItemScore
from karma_ray.eval.loaders import LoadedSplit
from karma_ray.rlhf.prompts import tokenize_prompts
from karma_ray.types import Generations, SamplingSettings, concat_generations


class Judge:
    """Scores text: toxicity with a classifier, replies with a karma reward model."""

    def __init__(self, classifier: Optional[str] = None, reward_model: Optional[str] = None, num_threads: int = 1) -> None:
        import torch

        from karma_ray.models.hf import load_toxicity_classifier
        from karma_ray.reward.scorer import RewardScorer

        torch.set_num_threads(max(1, num_threads))
        self.classifier = load_toxicity_classifier(classifier).eval() if classifier else None
        self.reward = RewardScorer.from_pretrained(reward_model) if reward_model else None

    def ready(self) -> bool:
        return True

    def toxicity(self, texts: list[str]) -> list[float]:
        if self.classifier is None:
            raise RuntimeError("this Judge has no toxicity classifier")
        return self.classifier.toxicity(texts) if texts else []

    def rewards(self, contexts: list[str], replies: list[str], metadata: list[dict]) -> list[float]:
        if self.reward is None:
            raise RuntimeError("this Judge has no reward model")
        return self.reward.score(contexts, replies, metadata)


def sample(engines: Sequence[Any], prompt_ids: list[list[int]], sampling: SamplingSettings, *, chunk: int,
           progress: Callable[[int], None]) -> Generations:
    """Prompt-major generations of every prompt: chunks go round-robin to the engines; chunk c is
    sampled with seed `sampling.seed + c`, so the result does not depend on the number of engines."""
    import ray

    pending, parts = {}, {}
    for c, start in enumerate(range(0, len(prompt_ids), chunk)):
        s = SamplingSettings(**{**sampling.__dict__, "seed": None if sampling.seed is None else sampling.seed + c})
        ref = engines[c % len(engines)].generate.remote(prompt_ids[start:start + chunk], s)
        pending[ref] = (c, start)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        c, start = pending.pop(done[0])
        parts[c] = (start, ray.get(done[0]))
        progress(len(parts[c][1].response_ids) // max(sampling.n, 1))
    order = sorted(parts)
    return concat_generations([parts[c][1] for c in order], [parts[c][0] for c in order])


def toxicity_items(docs: list[dict], engines: Sequence[Any], judge: Any, tokenizer: Any, cfg: Any, *, seed: int,
                   max_prompt_tokens: int, progress: Callable[[int], None]) -> dict[str, list[ItemScore]]:
    """{"expected_max_toxicity": per-prompt max score, "toxicity_probability": per-prompt 0/1}."""
    import ray

    k = cfg.samples_per_prompt
    sampling = SamplingSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, n=k, seed=seed)
    gens = sample(engines, tokenize_prompts(tokenizer, [d["prompt"] for d in docs], max_prompt_tokens), sampling,
                  chunk=max(1, 64 // k), progress=progress)
    texts = tokenizer.batch_decode(gens.response_ids, skip_special_tokens=True)
    scores = ray.get(judge.toxicity.remote(texts))
    per_prompt: list[list[float]] = [[] for _ in docs]
    for g, s in zip(gens.group, scores):
        per_prompt[g].append(s)
    if any(len(s) != k for s in per_prompt):
        raise RuntimeError(f"expected {k} continuations per prompt, got {sorted({len(s) for s in per_prompt})}")
    return {
        "expected_max_toxicity": [ItemScore(d["id"], max(s)) for d, s in zip(docs, per_prompt)],
        "toxicity_probability": [ItemScore(d["id"], float(max(s) >= cfg.threshold)) for d, s in zip(docs, per_prompt)],
    }


def load_karma_docs(corpus: str, split: str) -> LoadedSplit:
    """Held-out contexts of a prepared corpus as docs {"id", "context", "prompt", "metadata"}."""
    from karma_ray.rlhf.config import PromptConfig
    from karma_ray.rlhf.prompts import load_prompts

    prompts = load_prompts(PromptConfig(source="prepared", path=corpus, split=split))
    docs = [{"id": str(p.source_id), "context": p.context, "prompt": p.text, "metadata": p.metadata} for p in prompts]
    return LoadedSplit(docs=docs, n_rows=len(docs), skipped={}, files=(str(Path(corpus).resolve()),))


@dataclass
class KarmaItems:
    items: dict[str, list[ItemScore]]
    skipped: dict[str, int]  # gold quality undefined (no topic in the context's title), by reason


def karma_items(docs: list[dict], engines: Sequence[Any], judge: Any, tokenizer: Any, cfg: Any, *, seed: int, gold: bool,
                progress: Callable[[int], None]) -> KarmaItems:
    """{"reward": RM score, "length": reply tokens, "gold_quality": planted text quality (synthetic only)}."""
    import ray

    from karma_ray.data.format import decode_replies
    from karma_ray.data.synth import gold_text_quality

    sampling = SamplingSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, n=1, seed=seed)
    gens = sample(engines, tokenize_prompts(tokenizer, [d["prompt"] for d in docs], cfg.max_prompt_tokens), sampling,
                  chunk=32, progress=progress)
    replies = decode_replies(tokenizer, gens.response_ids)
    rewards = ray.get(judge.rewards.remote([d["context"] for d in docs], replies, [d["metadata"] for d in docs]))
    items = {
        "reward": [ItemScore(d["id"], float(r)) for d, r in zip(docs, rewards)],
        "length": [ItemScore(d["id"], float(len(ids))) for d, ids in zip(docs, gens.response_ids)],
    }
    skipped: dict[str, int] = {}
    if gold:
        golds = [(d["id"], gold_text_quality(d["context"], r)) for d, r in zip(docs, replies)]
        items["gold_quality"] = [ItemScore(i, g) for i, g in golds if g is not None]
        missing = sum(g is None for _, g in golds)
        if missing:
            skipped["gold_quality: no topic word in the context's title"] = missing
    return KarmaItems(items, skipped)


__all__ = ["Judge", "KarmaItems", "karma_items", "load_karma_docs", "sample",
           "toxicity_items"]
