"""Score replies with a saved reward model, by path alone (the API the PPO stage uses).

    scorer = RewardScorer.from_pretrained("runs/rm_text", device="cpu")
    scores = scorer.score(contexts, replies, metadata=None, batch_size=32)   # list[float]

`path` is a reward-model folder (holding karma_rm.json) or a `karma train-rm` output folder (its `model/`).
Scores are in standardized target units (train mean 0, std 1; the target is named in karma_rm.json).

Every variant scores: text/response read the text only; meta/text_meta also read `metadata`, one dict
per reply with prepared-example keys (hour, weekday, seconds_since_parent, ..., subreddit). `metadata`
may be None or lack keys (PPO replies were never posted, so they have no posting time): a missing value
is filled with the TRAINING mean (standardized 0), see karma_ray/reward/inputs.py. Controls: `constant`
scores 0.0; `random` scores a fixed N(0, 1) draw per (seed, context, reply), the same on every call.

This module does not import ray.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from karma_ray.reward.config import META_VARIANTS, TEXT_VARIANTS
from karma_ray.reward.inputs import build_inputs, rm_text, rows_to_columns
from karma_ray.reward.model import METADATA_FILE, RewardModelMeta, load_reward_model


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A reward-model folder, or a train-rm output folder whose model/ is one."""
    p = Path(path)
    if (p / METADATA_FILE).is_file():
        return p
    if (p / "model" / METADATA_FILE).is_file():
        return p / "model"
    raise FileNotFoundError(f"{p}: no {METADATA_FILE} here or in {p / 'model'} (not a karma reward model)")


def random_control_score(seed: int, context: str, reply: str) -> float:
    """A fixed standard-normal score from a hash of (seed, context, reply): stable across processes."""
    digest = hashlib.blake2b(f"{seed}\x00{context}\x00{reply}".encode(), digest_size=8).digest()
    return float(np.random.default_rng(int.from_bytes(digest, "big")).standard_normal())


class RewardScorer:
    """A loaded reward model in eval mode; `score` runs it in batches without gradients."""

    def __init__(self, model: Any, tokenizer: Any, meta: RewardModelMeta, device: str = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.device = device

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu", dtype: str = "float32") -> "RewardScorer":
        model, tokenizer, meta = load_reward_model(resolve_model_dir(path), device=device, dtype=dtype)
        return cls(model, tokenizer, meta, device)

    @property
    def variant(self) -> str:
        return self.meta.variant

    def score(
        self,
        contexts: Sequence[str],
        replies: Sequence[str],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        batch_size: int = 32,
    ) -> list[float]:
        if len(contexts) != len(replies):
            raise ValueError(f"{len(contexts)} contexts but {len(replies)} replies")
        columns = rows_to_columns(metadata, len(replies)) if self.variant in META_VARIANTS else {}
        return self.score_columns(contexts, replies, columns, batch_size).tolist()

    def score_columns(
        self, contexts: Sequence[str], replies: Sequence[str], columns: Mapping[str, Sequence[Any]], batch_size: int = 32
    ) -> np.ndarray:
        """Like `score`, with metadata as column lists (a prepared table's columns) -> (N,) float64."""
        import torch

        n = len(replies)
        if self.variant == "constant":
            return np.zeros(n)
        if self.variant == "random":
            return np.array([random_control_score(self.meta.random_seed, c, r) for c, r in zip(contexts, replies)])
        out = np.empty(n)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                texts = feats = buckets = None
                if self.variant in TEXT_VARIANTS:
                    texts = [rm_text(c, r, self.variant) for c, r in zip(contexts[start:stop], replies[start:stop])]
                if self.variant in META_VARIANTS:
                    feats, buckets = self.meta.features.encode({k: list(v[start:stop]) for k, v in columns.items()}, stop - start)
                inputs = build_inputs(texts, feats, buckets, self.tokenizer, self.meta.max_length).to(self.device)
                out[start:stop] = self.model(inputs).float().cpu().numpy()
        return out
