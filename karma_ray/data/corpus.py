"""The layout of a `karma prepare` output, owned in one place.

    PREPARED/
      manifest.json              counts, config, TRAIN subreddit statistics (data/prepare.py:Manifest)
      examples/split=S/*.parquet one row per kept comment (context, reply, score, metadata)
      pairs/split=S/*.parquet    sibling pairs (chosen_id, rejected_id, context, chosen, rejected)
      ledger/*.parquet           every record's outcome (the manifest's counts come from it)
      karma_stage.json           the stage record (karma_ray/stage.py)

Every reader (reward-model data, SFT, PPO prompts, evaluation, lineage, the demo) opens the folder
with `PreparedCorpus.open`, which checks what the reader needs and raises `CorpusError` naming the
missing piece, before any Ray work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.json"


class CorpusError(ValueError):
    """A folder is not a prepared corpus, or lacks a split or the pairs a reader needs."""


@dataclass(frozen=True)
class PreparedCorpus:
    root: Path  # absolute: Ray workers run in their own working directories

    @classmethod
    def open(cls, path: str | os.PathLike, *, splits: Sequence[str] = SPLITS, pairs: Sequence[str] = ()) -> "PreparedCorpus":
        """Check that `path` is a prepared corpus with Parquet examples for `splits` and pairs for `pairs`."""
        corpus = cls(Path(path).resolve())
        if not (corpus.root / MANIFEST_FILE).is_file():
            raise CorpusError(f"{path}: no {MANIFEST_FILE} (not a `karma prepare` output)")
        for split in splits:
            if not corpus.example_files(split):
                raise CorpusError(f"{path}: no Parquet files in {corpus.examples_dir(split)}")
        for split in pairs:
            if not corpus.pair_files(split):
                raise CorpusError(f"{path}: sibling pairs are needed, but {corpus.pairs_dir(split)} holds none")
        return corpus

    @property
    def ledger_dir(self) -> Path:
        return self.root / "ledger"

    def examples_dir(self, split: str) -> Path:
        return self.root / "examples" / f"split={split}"

    def pairs_dir(self, split: str) -> Path:
        return self.root / "pairs" / f"split={split}"

    def example_files(self, split: str) -> list[Path]:
        return sorted(self.examples_dir(split).rglob("*.parquet"))

    def pair_files(self, split: str) -> list[Path]:
        return sorted(self.pairs_dir(split).rglob("*.parquet"))


__all__ = ["CorpusError", "MANIFEST_FILE", "PreparedCorpus", "SPLITS"]
