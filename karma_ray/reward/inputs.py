"""What a reward model sees: the one text formatting, the metadata feature vector, and the model batch.

Training (train.py) and scoring (scorer.py) both build their inputs here, so a model is always scored on
exactly the inputs it was trained on.

Text. `rm_text(context, reply, variant)` = `policy_prompt(context) + policy_reply(reply)` from
karma_ray/data/format.py: the context's tagged turns, then the reply as the next `[user]` turn, the same
string the policy writes during PPO. The `response` variant drops the context (`[user] reply`). Inputs
longer than `max_length` tokens lose their START (tokenizer truncation side "left"), so the reply and the
turns nearest it survive; padding is on the right (BERT-style absolute positions stay put).

Metadata. `FEATURE_COLUMNS` encodes prepared example columns as numbers: hour and weekday as sin/cos on
their cycle, durations and counts as log1p, the parent's score as signed log1p, reply_is_op as 0/1. Each
column is standardized with the TRAIN split's mean and std (stored in the model's metadata file). A MISSING
value (None/NaN, or a field absent from a scorer's metadata dict, as for PPO replies that were never
posted) becomes 0 after standardization, i.e. the training mean. The subreddit is a hashed bucket
(blake2b, stable across processes) with a learned embedding; an unknown subreddit gets a fixed zero vector.
The synthetic corpus plants an `exp(-delay/3600 s)` bonus on the reply delay (seconds_since_parent) and a
per-subreddit offset (karma_ray/data/synth.py); log1p(delay) and the subreddit bucket can express both.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from karma_ray.data.format import policy_prompt, policy_reply

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Encoded numeric columns per metadata field ("subreddit" is a bucket, not a column).
FEATURE_COLUMNS: dict[str, tuple[str, ...]] = {
    "hour": ("hour_sin", "hour_cos"),
    "weekday": ("weekday_sin", "weekday_cos"),
    "seconds_since_parent": ("log1p_seconds_since_parent",),
    "seconds_since_submission": ("log1p_seconds_since_submission",),
    "depth": ("depth",),
    "parent_score": ("signed_log1p_parent_score",),
    "num_siblings": ("log1p_num_siblings",),
    "sibling_rank_by_time": ("log1p_sibling_rank_by_time",),
    "reply_is_op": ("reply_is_op",),
    "subreddit": (),
}


def rm_text(context: str, reply: str, variant: str) -> str:
    """The reward model's input text (see the module docstring)."""
    return policy_prompt("" if variant == "response" else context or "") + policy_reply(reply)


def subreddit_bucket(subreddit: str | None, buckets: int) -> int:
    """Stable bucket in [0, buckets) of a subreddit name (case-insensitive); `buckets` for unknown."""
    if not subreddit or buckets <= 0:
        return buckets
    digest = hashlib.blake2b(subreddit.lower().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def as_float(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def raw_feature_matrix(columns: Mapping[str, Sequence[Any]], n: int, fields: Sequence[str]) -> np.ndarray:
    """Encoded, NOT yet standardized features (n, F) from column lists; NaN where a value is missing.

    A field absent from `columns` is missing for every row.
    """
    out = []
    for f in fields:
        if f == "subreddit":
            continue
        raw = as_float(columns[f]) if f in columns else np.full(n, np.nan)
        if f in ("hour", "weekday"):
            period = 24.0 if f == "hour" else 7.0
            angle = 2 * math.pi * raw / period
            out += [np.sin(angle), np.cos(angle)]
        elif f == "parent_score":
            out.append(np.sign(raw) * np.log1p(np.abs(raw)))
        elif f in ("depth", "reply_is_op"):
            out.append(raw)
        else:  # durations and counts (non-negative, heavy-tailed)
            out.append(np.log1p(np.clip(raw, 0, None)))
    return np.stack(out, axis=1) if out else np.zeros((n, 0))


@dataclass(frozen=True)
class FeatureSpec:
    """Which metadata a model reads and the TRAIN statistics that standardize it (saved with the model)."""

    fields: tuple[str, ...]
    mean: tuple[float, ...]  # per encoded column
    std: tuple[float, ...]
    subreddit_buckets: int  # 0 when "subreddit" is not a field

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for f in self.fields for c in FEATURE_COLUMNS[f])

    @property
    def uses_subreddit(self) -> bool:
        return "subreddit" in self.fields and self.subreddit_buckets > 0

    @classmethod
    def fit(cls, columns: Mapping[str, Sequence[Any]], n: int, fields: Sequence[str], subreddit_buckets: int) -> "FeatureSpec":
        raw = raw_feature_matrix(columns, n, fields)
        # A column missing in every row (e.g. parent scores absent from early dumps) is legal: numpy
        # warns "Mean of empty slice" and returns NaN, which becomes mean 0 / std 1 below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(raw, axis=0) if n else np.zeros(raw.shape[1])
            std = np.nanstd(raw, axis=0) if n else np.ones(raw.shape[1])
        mean = np.nan_to_num(mean, nan=0.0)
        std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)  # a constant column stays 0, not inf
        return cls(tuple(fields), tuple(map(float, mean)), tuple(map(float, std)),
                   subreddit_buckets if "subreddit" in fields else 0)

    def encode(self, columns: Mapping[str, Sequence[Any]], n: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (standardized features (n, F) float32 with missing = 0, subreddit buckets (n,) int64)."""
        raw = raw_feature_matrix(columns, n, self.fields)
        z = (raw - np.asarray(self.mean)) / np.asarray(self.std)
        z = np.nan_to_num(z, nan=0.0).astype(np.float32)
        subs = columns.get("subreddit", [None] * n)
        buckets = np.array([subreddit_bucket(s, self.subreddit_buckets) for s in subs], dtype=np.int64)
        return z, buckets

    def to_dict(self) -> dict:
        return {"fields": list(self.fields), "columns": list(self.columns), "mean": list(self.mean),
                "std": list(self.std), "subreddit_buckets": self.subreddit_buckets}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSpec":
        return cls(tuple(d["fields"]), tuple(d["mean"]), tuple(d["std"]), int(d["subreddit_buckets"]))


@dataclass(frozen=True)
class TargetSpec:
    """The regression target and the TRAIN statistics that standardize it: model units = (y - mean) / std."""

    column: str
    mean: float
    std: float

    def standardize(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"column": self.column, "mean": self.mean, "std": self.std, "transform": "(y - mean) / std"}

    @classmethod
    def fit(cls, column: str, values: Sequence[float]) -> "TargetSpec":
        y = as_float(values)
        y = y[np.isfinite(y)]
        if y.size == 0:
            raise ValueError(f"no finite values in target column {column!r}")
        std = float(y.std())
        return cls(column, float(y.mean()), std if std > 1e-8 else 1.0)


def rows_to_columns(rows: Sequence[Mapping[str, Any]] | None, n: int) -> dict[str, list]:
    """Scorer metadata (one dict per reply, None or missing keys allowed) -> column lists."""
    rows = list(rows) if rows is not None else [{}] * n
    if len(rows) != n:
        raise ValueError(f"got {len(rows)} metadata rows for {n} replies")
    keys = {k for r in rows for k in (r or {})}
    return {k: [(r or {}).get(k) for r in rows] for k in keys}


@dataclass
class RewardInputs:
    """One model batch. Text fields are None for the `meta` variant; metadata fields are None without metadata."""

    input_ids: "torch.Tensor | None" = None  # (B, T) int64, right-padded
    attention_mask: "torch.Tensor | None" = None  # (B, T) int64
    token_type_ids: "torch.Tensor | None" = None  # (B, T) int64, only for tokenizers that make them
    features: "torch.Tensor | None" = None  # (B, F) float32, standardized metadata
    subreddit_bucket: "torch.Tensor | None" = None  # (B,) int64

    def to(self, device: Any) -> "RewardInputs":
        return RewardInputs(*(None if t is None else t.to(device) for t in
                              (self.input_ids, self.attention_mask, self.token_type_ids, self.features, self.subreddit_bucket)))


def build_inputs(
    texts: Sequence[str] | None,
    features: np.ndarray | None,
    buckets: np.ndarray | None,
    tokenizer: Any = None,
    max_length: int = 256,
) -> RewardInputs:
    """Tokenize `texts` (when the model reads text) and wrap metadata arrays as tensors."""
    import torch

    out = RewardInputs()
    if texts is not None:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        out.input_ids = enc["input_ids"]
        out.attention_mask = enc["attention_mask"]
        out.token_type_ids = enc.get("token_type_ids")
    if features is not None:
        out.features = torch.as_tensor(features, dtype=torch.float32)
        out.subreddit_bucket = torch.as_tensor(buckets, dtype=torch.int64)
    return out
