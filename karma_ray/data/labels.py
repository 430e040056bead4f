"""Karma targets, sibling preference pairs and the thread split: small pure functions.

The raw Reddit score is heavy-tailed and depends on how many people saw a reply, so reward models
train on normalized targets instead (chosen per run, all written):
- `log_score`: signed log1p, sign(s) * log(1 + |s|) (computed in threads.py);
- `sibling_percentile` / `thread_percentile`: the reply's rank among the kept replies to the same
  parent / in the same thread, in [0, 1] (ties share the mean rank; a lone reply gets 0.5);
- `subreddit_z`: log_score standardized by its subreddit's mean and std over the TRAIN split
  (statistics from train only, so val/test do not leak into their own targets; prepare.py).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from typing import Sequence

from karma_ray.config import PairConfig, SplitConfig


def percentile_ranks(scores: Sequence[float]) -> list[float]:
    """Each value's fraction of the OTHER values below it, ties counted half, in [0, 1].

    [1, 3] -> [0.0, 1.0]; [5, 5] -> [0.5, 0.5]; [2, 1, 2] -> [0.75, 0.0, 0.75]; [7] -> [0.5].
    """
    n = len(scores)
    if n == 1:
        return [0.5]
    ordered = sorted(scores)
    # below = bisect_left, equal others = bisect_right - bisect_left - 1
    return [(bisect_left(ordered, s) + bisect_right(ordered, s) - 1) / 2 / (n - 1) for s in scores]


def split_for_thread(link_id: str, cfg: SplitConfig) -> str:
    """Deterministic split of a whole thread from a salted hash of its link_id.

    blake2b rather than `hash()`: Python salts str hashes per process, and every Ray worker must
    agree on the split of a thread.
    """
    digest = hashlib.blake2b(f"{cfg.salt}:{link_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"


def prefers(
    score_a: int, created_a: int, score_b: int, created_b: int, cfg: PairConfig
) -> bool:
    """Is reply A preferred over sibling B?

    A must score higher by `min_score_margin`, and by `min_score_ratio` when both scores are
    positive (SHP's 2x ratio). With `shp_rule`, A must also have been written LATER than B: B had
    more time to collect votes and still lost, so the gap is not an exposure-time artifact
    (Ethayarajh et al. 2022, Stanford Human Preferences).
    """
    if score_a - score_b < max(cfg.min_score_margin, 1):
        return False
    if score_a > 0 and score_b > 0 and score_a < cfg.min_score_ratio * score_b:
        return False
    if cfg.shp_rule and not created_a > created_b:
        return False
    return True
