"""Reward-model metrics (numpy only): Pearson, Spearman, MSE of score vs target, pairwise accuracy on
sibling pairs, and a per-subreddit breakdown.

Undefined values (a constant score has no correlation; a split without pairs has no pairwise accuracy)
are None, so metrics.json stays valid JSON.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, fields
from typing import Mapping, Sequence

import numpy as np


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties get their mean rank ([10, 20, 20, 5] -> [2, 3.5, 3.5, 1])."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # NaN != NaN: each NaN is its own group
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return None
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((da * da).sum() * (db * db).sum()))
    r = float((da * db).sum()) / denom if denom > 0 else math.nan
    return r if math.isfinite(r) else None


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    return pearson(average_ranks(a), average_ranks(b))


def mse(scores: Sequence[float], targets: Sequence[float]) -> float | None:
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    return float(np.mean((s - t) ** 2)) if len(s) else None


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float | None:
    """Fraction of pairs scored chosen > rejected; a tie counts half (a constant model scores 0.5)."""
    c, r = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    if not len(c):
        return None
    return float(np.mean((c > r) + 0.5 * (c == r)))


def pair_scores(ids: Sequence[str], scores: Sequence[float], pairs: Sequence[tuple[str, str]]) -> tuple[list[float], list[float], int]:
    """Look up (chosen_id, rejected_id) scores by example id -> (chosen, rejected, pairs with a missing side)."""
    by_id = dict(zip(ids, scores))
    found = [(by_id[c], by_id[r]) for c, r in pairs if c in by_id and r in by_id]
    return [c for c, _ in found], [r for _, r in found], len(pairs) - len(found)


def reward_metrics(
    scores: Sequence[float],
    targets: Sequence[float],
    ids: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] = (),
) -> dict:
    """spearman, pearson, mse (in standardized target units), pairwise_accuracy, n, n_pairs."""
    chosen, rejected, _ = pair_scores(ids or [], scores, pairs) if pairs else ([], [], 0)
    return {"spearman": spearman(scores, targets), "pearson": pearson(scores, targets), "mse": mse(scores, targets),
            "n": len(scores), "pairwise_accuracy": pairwise_accuracy(chosen, rejected), "n_pairs": len(chosen)}


def metrics_by_subreddit(
    subreddits: Sequence[str],
    scores: Sequence[float],
    targets: Sequence[float],
    ids: Sequence[str],
    pairs_by_subreddit: Mapping[str, Sequence[tuple[str, str]]],
    top: int = 10,
    min_examples: int = 20,
) -> dict[str, dict]:
    """reward_metrics per subreddit, for the `top` most frequent ones with at least `min_examples` examples."""
    counts = Counter(subreddits)
    out = {}
    for sub, n in counts.most_common(top):
        if n < min_examples:
            continue
        idx = [i for i, s in enumerate(subreddits) if s == sub]
        out[sub] = reward_metrics([scores[i] for i in idx], [targets[i] for i in idx], [ids[i] for i in idx],
                                  pairs_by_subreddit.get(sub, ()))
    return out


@dataclass(frozen=True)
class SplitMetrics:
    """One split's metrics of a reward model (the `metrics.json` entry, typed); None = undefined."""

    spearman: float | None
    pearson: float | None
    mse: float | None
    pairwise_accuracy: float | None
    n: int
    n_pairs: int

    @classmethod
    def from_dict(cls, d: Mapping) -> "SplitMetrics":
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})

    def headline(self) -> str:
        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        return (f"spearman {fmt(self.spearman)}, pairwise accuracy {fmt(self.pairwise_accuracy)}, "
                f"mse {fmt(self.mse)} (n={self.n:,}, {self.n_pairs:,} pairs)")
