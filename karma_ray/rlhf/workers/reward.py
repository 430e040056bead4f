"""The reward role: one reward model (or rule) that scores (context, response) text.

The driver launches one `RewardWorker` per configured model (times `reward.num_actors`) and
combines their scores with the configured weights (`combine_scores`), so each model can sit on its
own resources and a dead one is replaced alone.

Scoring goes through `karma_ray.reward.scorer.RewardScorer`, the same object and the same input
formatting that `karma train-rm` evaluates with, so a reward model scores a PPO response exactly as it
scored a Reddit reply in training. The `random` and `constant` controls are reward-model folders too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from karma_ray.rlhf.rules import is_rule, make_rule


class RewardWorker:
    def __init__(self, path: str, name: Optional[str] = None, batch_size: int = 32) -> None:
        self.path = path
        self.name = name or (path if is_rule(path) else Path(path).name)
        self.batch_size = batch_size
        if is_rule(path):
            self._rule = make_rule(path)
            self._scorer = None
            self.variant = "rule"
        else:
            from karma_ray.reward.scorer import RewardScorer

            self._rule = None
            # The GPU when the actor was given one (Ray sets CUDA_VISIBLE_DEVICES to its GPUs, and to
            # none when reward.gpus_per_actor is 0), else the CPU.
            self._scorer = RewardScorer.from_pretrained(path, device="cuda" if torch.cuda.is_available() else "cpu")
            self.variant = self._scorer.variant

    def ready(self) -> dict:
        return {"name": self.name, "path": self.path, "variant": self.variant}

    def score(
        self, contexts: Sequence[str], responses: Sequence[str], metadata: Optional[Sequence[dict]] = None
    ) -> tuple[torch.Tensor, float]:
        """(B,) float32 scores and the seconds spent scoring."""
        start = time.perf_counter()
        if self._rule is not None:
            values = [self._rule(c, r) for c, r in zip(contexts, responses)]
        else:
            values = self._scorer.score(
                list(contexts), list(responses), metadata=None if metadata is None else list(metadata), batch_size=self.batch_size
            )
        return torch.tensor(values, dtype=torch.float32), time.perf_counter() - start


def combine_scores(scores: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_k weight_k * score_k, each (B,) -> (B,)."""
    return sum(float(w) * s.float() for s, w in zip(scores, weights))
