"""Reading a prepared corpus for reward-model training and evaluation.

- TRAIN statistics (target mean/std, metadata feature mean/std) come from the train split's numeric
  columns only (pyarrow column projection: no text is read on the driver).
- Ray Data reads the Parquet for the workers: `train` examples (split across workers), `train_pairs`
  (sibling pairs with each side's metadata attached, split across workers) and `val` examples (every
  worker gets all of them and scores its share). The datasets are materialized in the object store
  before training (see `ray_datasets`); each worker holds its shard in memory.
- The final val/test metrics are computed on the driver by scoring the EXPORTED model folder with
  RewardScorer, so the reported numbers are those of the artifact PPO will load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from karma_ray.data.corpus import PreparedCorpus
from karma_ray.reward.config import CONTROL_VARIANTS, META_VARIANTS, METADATA_FIELDS, RewardModelConfig
from karma_ray.reward.inputs import FeatureSpec, TargetSpec, as_float


def needs_pairs(cfg: RewardModelConfig) -> bool:
    return cfg.loss.pairwise_on and cfg.input.variant not in CONTROL_VARIANTS


def split_dir(data: str | os.PathLike, kind: str, split: str) -> Path:
    """PREPARED/<kind>/split=<split> for kind "examples" or "pairs" (the layout is PreparedCorpus's)."""
    if kind not in ("examples", "pairs"):
        raise ValueError(f"unknown kind {kind!r} (examples or pairs)")
    corpus = PreparedCorpus(Path(data))
    return corpus.examples_dir(split) if kind == "examples" else corpus.pairs_dir(split)


def metadata_columns(cfg: RewardModelConfig) -> list[str]:
    return [f for f in cfg.input.features if f in METADATA_FIELDS] if cfg.input.variant in META_VARIANTS else []


def example_columns(cfg: RewardModelConfig) -> list[str]:
    """Columns the workers and the evaluation read from examples."""
    return list(dict.fromkeys(["id", "subreddit", "context", "reply", cfg.target.column, *metadata_columns(cfg)]))


def read_table(data: str | os.PathLike, kind: str, split: str, columns: Sequence[str] | None = None) -> pa.Table:
    return pads.dataset(str(split_dir(data, kind, split)), format="parquet").to_table(columns=list(columns) if columns else None)


def fit_specs(data: str | os.PathLike, cfg: RewardModelConfig) -> tuple[TargetSpec, FeatureSpec | None]:
    """Target and feature standardization from the TRAIN split."""
    meta_cols = metadata_columns(cfg)
    t = read_table(data, "examples", "train", list(dict.fromkeys([cfg.target.column, *meta_cols])))
    if cfg.train.max_train_examples is not None:
        t = t.slice(0, cfg.train.max_train_examples)
    target = TargetSpec.fit(cfg.target.column, t[cfg.target.column].to_pylist())
    features = None
    if cfg.input.variant in META_VARIANTS:
        cols = {c: t[c].to_pylist() for c in meta_cols}
        features = FeatureSpec.fit(cols, t.num_rows, cfg.input.features, cfg.model.subreddit_buckets)
    return target, features


def attach_side_metadata(batch: pa.Table, side_table: pa.Table) -> pa.Table:
    """Pair rows, in their order, + `chosen__<field>` / `rejected__<field>` metadata (looked up by the example id).

    A pair whose side has no example row keeps null metadata (standardized to the training mean later).
    Not `Table.join`: Arrow's hash join returns the rows in an order that varies with its threads, so
    each rank's fixed shard of pairs (and the training loss) changed from run to run.
    """
    for side in ("chosen", "rejected"):
        rows = pc.index_in(batch[f"{side}_id"], value_set=side_table["id"])  # null: no example row
        for c in [c for c in side_table.column_names if c != "id"]:
            batch = batch.append_column(f"{side}__{c}", side_table[c].take(rows))
    return batch


def ray_datasets(data: str | os.PathLike, cfg: RewardModelConfig, materialize: bool = True) -> dict[str, Any]:
    """Ray Datasets for the TorchTrainer (see the module docstring); `materialize=False` leaves them lazy."""
    import ray.data

    cols = example_columns(cfg)
    train = ray.data.read_parquet(str(split_dir(data, "examples", "train"))).select_columns(cols)
    if cfg.train.max_train_examples is not None:
        train = train.limit(cfg.train.max_train_examples)
    datasets = {"train": train, "val": ray.data.read_parquet(str(split_dir(data, "examples", "val"))).select_columns(cols)}
    if needs_pairs(cfg):
        pair_cols = ["chosen_id", "rejected_id", "context", "chosen", "rejected", "subreddit"]
        pairs = ray.data.read_parquet(str(split_dir(data, "pairs", "train"))).select_columns(pair_cols)
        if cfg.input.variant in META_VARIANTS:  # each pair side's metadata, from the train examples
            fields = [f for f in metadata_columns(cfg) if f != "subreddit"]
            side = read_table(data, "examples", "train", ["id", *fields])
            pairs = pairs.map_batches(attach_side_metadata, batch_format="pyarrow", fn_kwargs={"side_table": side})
        datasets["train_pairs"] = pairs
    # Read order kept (it is the files' order): `limit` takes the same first rows and every worker the
    # same rows on every run (training/loop.py: fixed_shards).
    for ds in datasets.values():
        ds.context.execution_options.preserve_order = True
    # Materialized on the driver, BEFORE the workers take their CPUs: when the workers hold every CPU
    # (2 workers x 1 CPU on 2 cores), a lazy read inside the trainer waits forever for a CPU (measured: a
    # hang in the SplitCoordinator). Workers read their shards once anyway, so nothing streams later.
    datasets = {name: ds.materialize() for name, ds in datasets.items()} if materialize else datasets
    # Every worker reads `val` whole (not split) inside its own process. Ray Data's progress bar there
    # is never closed (Ray Train ends the worker first), and the driver then redraws that stale bar in
    # front of every later log line; the other datasets stream from a SplitCoordinator actor.
    datasets["val"].context.enable_progress_bars = False
    return datasets


def split_pairs(data: str | os.PathLike, split: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(chosen_id, rejected_id) pairs of a split and their subreddits ([] when the corpus has no pairs)."""
    if not any(split_dir(data, "pairs", split).glob("*.parquet")):
        return [], []
    t = read_table(data, "pairs", split, ["chosen_id", "rejected_id", "subreddit"])
    return list(zip(t["chosen_id"].to_pylist(), t["rejected_id"].to_pylist())), t["subreddit"].to_pylist()


def evaluate_split(scorer: Any, data: str | os.PathLike, split: str, cfg: RewardModelConfig, batch_size: int = 64) -> dict:
    """Metrics of a saved model (RewardScorer) on one split, with the per-subreddit breakdown."""
    from karma_ray.reward.metrics import metrics_by_subreddit, reward_metrics

    t = read_table(data, "examples", split, example_columns(cfg))
    cols = {c: t[c].to_pylist() for c in metadata_columns(cfg)}
    cols["subreddit"] = t["subreddit"].to_pylist()
    scores = scorer.score_columns(t["context"].to_pylist(), t["reply"].to_pylist(), cols, batch_size)
    raw = as_float(t[cfg.target.column].to_pylist())
    keep = np.isfinite(raw)
    targets = scorer.meta.target.standardize(raw) if scorer.meta.target else raw
    ids_k = [i for i, k in zip(t["id"].to_pylist(), keep) if k]
    subs_k = [s for s, k in zip(cols["subreddit"], keep) if k]
    scores_k, targets_k = scores[keep].tolist(), targets[keep].tolist()
    pairs, pair_subs = split_pairs(data, split)
    out = reward_metrics(scores_k, targets_k, ids_k, pairs)
    by_sub: dict[str, list] = {}
    for p, s in zip(pairs, pair_subs):
        by_sub.setdefault(s, []).append(p)
    out["by_subreddit"] = metrics_by_subreddit(subs_k, scores_k, targets_k, ids_k, by_sub, cfg.eval.subreddits, cfg.eval.min_subreddit_examples)
    return out
