"""Statistics of evaluation results: every metric with a confidence interval, and paired tests
between two checkpoints scored on the same items (numpy and scipy only).

    est = mean_ci(per_item_scores, seed=0)                  # Estimate(value, low, high, se, n)
    cmp = paired_comparison(scores_a, scores_b, seed=0)     # b - a: bootstrap CI and a paired test
    adjusted = holm([c.p_value for c in comparisons])       # across the tasks of one comparison

- Intervals are percentile bootstraps over items (scipy.stats.bootstrap), `n_resamples` resamples
  from a seeded generator, so a rerun gives the same interval.
- The paired test is the exact McNemar test when both score vectors are binary (0/1 items: its
  p-value is the two-sided binomial test of the discordant pairs), else a paired permutation test
  (random sign flips of the per-item differences; exact when 2^n <= n_resamples).
- `holm` is Holm's step-down correction (controls the family-wise error rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_RESAMPLES = 10_000


@dataclass(frozen=True)
class Estimate:
    value: float  # the mean over items
    low: float  # the confidence interval
    high: float
    se: float  # the bootstrap standard error
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}] (n={self.n})"


@dataclass(frozen=True)
class PairedComparison:
    mean_a: float
    mean_b: float
    difference: Estimate  # mean of (b - a) over items, with its paired-bootstrap interval
    p_value: float  # two-sided, uncorrected
    test: str  # "mcnemar-exact" | "paired-permutation"
    n: int
    discordant: tuple[int, int] | None = None  # McNemar: (a right & b wrong, a wrong & b right)


def _as_vector(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"{name}: need a non-empty 1-D sequence of per-item scores, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: {int((~np.isfinite(x)).sum())} non-finite item scores (count them as failures first)")
    return x


def mean_ci(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Estimate:
    """The mean of per-item scores with a percentile-bootstrap interval over items."""
    from scipy.stats import bootstrap

    x = _as_vector(values, "values")
    if len(x) == 1 or np.all(x == x[0]):  # no spread: the interval is the point (scipy warns on it)
        return Estimate(float(x.mean()), float(x.mean()), float(x.mean()), 0.0, len(x), confidence)
    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    rng=np.random.default_rng(seed), vectorized=True)
    return Estimate(float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high),
                    float(res.standard_error), len(x), confidence)


def is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> tuple[float, tuple[int, int]]:
    """Two-sided exact McNemar p-value of paired binary outcomes, and the discordant counts
    (a=1 & b=0, a=0 & b=1). No discordant pair: p = 1."""
    from scipy.stats import binomtest

    a, b = _as_vector(a, "a"), _as_vector(b, "b")
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5, alternative="two-sided").pvalue)
    return p, (only_a, only_b)


def paired_permutation_p(a: Sequence[float], b: Sequence[float], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of mean(b - a) = 0 under random sign flips of the per-item differences."""
    from scipy.stats import permutation_test

    d = _as_vector(b, "b") - _as_vector(a, "a")
    if np.all(d == 0):
        return 1.0
    res = permutation_test((d,), np.mean, permutation_type="samples", n_resamples=n_resamples, alternative="two-sided",
                           rng=np.random.default_rng(seed), vectorized=True)
    return float(min(1.0, res.pvalue))


def paired_comparison(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> PairedComparison:
    """Checkpoint b against checkpoint a on the same items (item i of a and of b are one item)."""
    x, y = _as_vector(a, "a"), _as_vector(b, "b")
    if len(x) != len(y):
        raise ValueError(f"paired scores need the same items: {len(x)} against {len(y)}")
    diff = mean_ci(y - x, confidence=confidence, n_resamples=n_resamples, seed=seed)
    if is_binary(x) and is_binary(y):
        p, discordant = mcnemar_exact(x, y)
        return PairedComparison(float(x.mean()), float(y.mean()), diff, p, "mcnemar-exact", len(x), discordant)
    p = paired_permutation_p(x, y, n_resamples=n_resamples, seed=seed)
    return PairedComparison(float(x.mean()), float(y.mean()), diff, p, "paired-permutation", len(x))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the k-th smallest of m is multiplied by (m - k + 1),
    then made non-decreasing in that order and capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or np.any(~np.isfinite(p)):
        raise ValueError(f"p-values must be a 1-D sequence in [0, 1], got {p_values!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(adjusted_sorted, 1.0)
    return out.tolist()


__all__ = ["DEFAULT_RESAMPLES", "Estimate", "PairedComparison", "holm", "is_binary", "mcnemar_exact", "mean_ci",
           "paired_comparison", "paired_permutation_p"]
