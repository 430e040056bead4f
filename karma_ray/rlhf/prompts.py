"""Prompts for PPO: contexts from a prepared Reddit corpus, or any JSONL/Parquet prompt file.

The no-exposure condition of the paper needs prompts that carry no Reddit text, hence the file
source. Prompt order is a seeded permutation per epoch; the sampler's position is part of the
driver's checkpoint so a resumed run draws exactly the prompts it would have drawn.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from karma_ray.data.format import policy_prompt
from karma_ray.rlhf.config import PromptConfig

# Metadata columns of prepared examples handed to reward models that see metadata (text_meta, meta).
# Response-specific ones (posting delay, score) are unknown for a generated reply: the scorer fills them.
PROMPT_METADATA_COLUMNS = ("subreddit", "depth", "hour", "weekday", "parent_score", "num_siblings", "thread_comments", "context_depth")


class PromptError(ValueError):
    """Bad prompt source: missing file, wrong field, empty set."""


@dataclass
class Prompt:
    context: str  # what reward models see as the conversational context
    text: str  # what the policy sees (policy_prompt(context) when rendering)
    metadata: dict = field(default_factory=dict)
    source_id: Optional[str] = None  # the prepared example's id (recorded in the policy's lineage)


def load_prompts(cfg: PromptConfig) -> list[Prompt]:
    path = Path(cfg.path)
    if cfg.source == "prepared":
        rows = _read_prepared(path, cfg.split)
        items = [(r["context"] or "", {k: r[k] for k in PROMPT_METADATA_COLUMNS if k in r}, r.get("id")) for r in rows]
    else:
        rows = _read_prompt_file(path)
        missing = sum(1 for r in rows if not isinstance(r.get(cfg.field), str))
        if missing == len(rows):
            keys = sorted(rows[0]) if rows else []
            raise PromptError(f"{path}: no row has a string field {cfg.field!r} (keys: {keys}); set prompts.field")
        if missing:
            raise PromptError(f"{path}: {missing} of {len(rows)} rows lack a string {cfg.field!r}")
        items = [(r[cfg.field], {}, None) for r in rows]
    prompts = [Prompt(c, policy_prompt(c) if cfg.render else c, m, i) for c, m, i in items]
    if cfg.max_prompts is not None:
        prompts = prompts[: cfg.max_prompts]
    if not prompts:
        raise PromptError(f"no prompts in {path}")
    return prompts


def check_prompt_source(cfg: PromptConfig) -> None:
    """Cheap existence checks, run before any Ray resource is taken."""
    path = Path(cfg.path)
    if cfg.source == "prepared":
        from karma_ray.data.corpus import CorpusError, PreparedCorpus

        try:
            PreparedCorpus.open(path, splits=(cfg.split,))
        except CorpusError as err:
            raise PromptError(f"prompts.path: {err}") from None
    elif not path.is_file():
        raise PromptError(f"prompt file {path} does not exist")
    elif path.suffix not in (".jsonl", ".json", ".parquet"):
        raise PromptError(f"{path}: prompt files are .jsonl or .parquet")


def _read_prepared(path: Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    from karma_ray.data.corpus import PreparedCorpus

    corpus = PreparedCorpus(path)
    files = corpus.example_files(split)
    if not files:
        raise PromptError(f"no parquet files in {corpus.examples_dir(split)}")
    columns = ["id", "context", *PROMPT_METADATA_COLUMNS]
    rows: list[dict] = []
    for f in files:
        table = pq.read_table(f)
        rows.extend(table.select([c for c in columns if c in table.column_names]).to_pylist())
    return rows


def _read_prompt_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows, bad = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad.append(lineno)
    if bad:
        raise PromptError(f"{path}: {len(bad)} malformed line(s), first at line {bad[0]}")
    return rows


class PromptSampler:
    """Batches of prompts without replacement; a new seeded permutation each epoch."""

    def __init__(self, n_prompts: int, batch_size: int, seed: int) -> None:
        if n_prompts < 1:
            raise PromptError("no prompts")
        self.n, self.batch_size, self.seed = n_prompts, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_indices(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.n - self.position)
            out.extend(self._order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n or state["seed"] != self.seed:
            raise PromptError(f"checkpoint was taken with {state['n']} prompts / seed {state['seed']}, now {self.n} / {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)


def tokenize_prompts(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids cut from the LEFT to max_tokens (the end of a context matters most); never empty."""
    out = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids = ids[-max_tokens:]
        out.append(ids if ids else [tokenizer.eos_token_id])
    return out


