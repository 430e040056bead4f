"""(context, reply) rows -> token batches whose loss counts only the reply.

Text is built by `karma_ray.data.format` (the one policy rendering, shared with PPO and evaluation):

    prompt = policy_prompt(context)            "…[title] …\n[user] parent\n[user]"
    target = policy_reply(reply) + EOS         " the reply<|endoftext|>"

A sequence is prompt tokens then target tokens, RIGHT-padded; `labels` hold the target tokens and
-100 on prompt and padding positions (the Hugging Face convention), so the model learns to write the
reply given the context, never to reproduce the context. Only the context is cut when the prompt is
too long, from its START (the turns nearest the reply matter most, as `render_context` does).

Imports torch and pyarrow only (no Ray): the same code runs in the Ray Train workers, on the driver
(lineage, validation rows) and in unit tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.nn.utils.rnn import pad_sequence

from karma_ray.data.format import policy_prompt, policy_reply
from karma_ray.sft.config import SFTDataConfig

IGNORE_INDEX = -100  # labels at this value are skipped by the loss (torch/HF cross-entropy convention)
ROW_COLUMNS = ["id", "context", "reply", "score", "sibling_percentile"]


class SFTDataError(ValueError):
    """The prepared data cannot be trained on (missing split, no eligible example)."""


@dataclass(frozen=True)
class EncodedExample:
    prompt_ids: list[int]
    target_ids: list[int]
    prompt_truncated: bool
    reply_truncated: bool


@dataclass
class SFTBatch:
    """Right-padded prompt+reply sequences; `labels` is -100 except on reply tokens."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    labels: torch.Tensor  # (B, T) long, reply token ids, IGNORE_INDEX elsewhere

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def encode_example(tokenizer, context: str, reply: str, max_prompt_tokens: int, max_reply_tokens: int) -> EncodedExample:
    """Token ids of one example, cut to the budgets.

    The prompt is tokenized with the tokenizer's special tokens (as vLLM and `generate` will see it at
    PPO time); the target without, then EOS. A prompt over budget keeps its special prefix (BOS) and
    its LAST tokens. A reply over budget is cut and gets no EOS: teaching the model to stop where the
    human author did not would bias it towards short replies.
    """
    prompt = tokenizer(policy_prompt(context)).input_ids
    prompt_truncated = len(prompt) > max_prompt_tokens
    if prompt_truncated:
        n_prefix = len(tokenizer("").input_ids)  # the special prefix: BOS for Llama-style tokenizers, none for GPT-2
        keep = max(max_prompt_tokens - n_prefix, 0)
        prompt = prompt[:n_prefix] + (prompt[len(prompt) - keep :] if keep else [])
        prompt = prompt[:max_prompt_tokens]
    reply_ids = tokenizer(policy_reply(reply), add_special_tokens=False).input_ids
    reply_truncated = len(reply_ids) + 1 > max_reply_tokens
    target = reply_ids[:max_reply_tokens] if reply_truncated else reply_ids + [tokenizer.eos_token_id]
    return EncodedExample(list(prompt), list(target), prompt_truncated, reply_truncated)


def collate(examples: Sequence[EncodedExample], pad_token_id: int) -> SFTBatch:
    """Prompt+target, right-padded to the longest sequence of the batch."""
    if not examples:
        raise ValueError("collate needs at least one example")

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        return pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)

    return SFTBatch(
        input_ids=pad([e.prompt_ids + e.target_ids for e in examples], pad_token_id),
        attention_mask=pad([[1] * (len(e.prompt_ids) + len(e.target_ids)) for e in examples], 0),
        labels=pad([[IGNORE_INDEX] * len(e.prompt_ids) + e.target_ids for e in examples], IGNORE_INDEX),
    )


def make_batch(tokenizer, contexts: Sequence[str], replies: Sequence[str], cfg: SFTDataConfig) -> SFTBatch:
    encoded = [encode_example(tokenizer, c, r, cfg.max_prompt_tokens, cfg.max_reply_tokens) for c, r in zip(contexts, replies)]
    return collate(encoded, tokenizer.pad_token_id)


def reply_nll(logits: torch.Tensor, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of the reply tokens.

    Position t predicts token t+1, so logits[:, :-1] are scored against labels[:, 1:].
    Returns (nll (B, T-1), mask (B, T-1)); nll is 0 where mask is 0.
    """
    from karma_ray.algo.logprobs import logprobs_from_logits, masked_fill_zero

    targets = batch.labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX  # (B, T-1)
    safe_targets = torch.where(mask, targets, torch.zeros_like(targets))
    logp = logprobs_from_logits(logits[:, :-1], safe_targets)  # (B, T-1)
    return masked_fill_zero(-logp, mask), mask


# ---------------------------------------------------------------------------------------------
# Which prepared rows are trained on (the same rule in Ray Data, on the driver, in the lineage)
# ---------------------------------------------------------------------------------------------


def split_dirs(prepared_dir: str | os.PathLike, splits: Sequence[str]) -> list[Path]:
    """DATA/examples/split=NAME folders, each checked to hold Parquet files (CorpusError if not)."""
    from karma_ray.data.corpus import PreparedCorpus

    corpus = PreparedCorpus.open(prepared_dir, splits=splits)
    return [corpus.examples_dir(split) for split in splits]


def keep_rows(table: pa.Table, cfg: SFTDataConfig, max_id: str | None = None) -> pa.Table:
    """Rows passing the configured filters (and with id <= max_id when the example count is capped).

    `max_id` turns "the first N eligible examples by id" into one comparison each worker can apply
    to its own rows, instead of shipping an id list to every worker.
    """
    mask = pc.is_valid(table["id"])
    if cfg.min_score is not None:
        mask = pc.and_kleene(mask, pc.greater_equal(table["score"], cfg.min_score))
    if cfg.min_sibling_percentile is not None:
        mask = pc.and_kleene(mask, pc.greater_equal(table["sibling_percentile"], cfg.min_sibling_percentile))
    if max_id is not None:
        mask = pc.and_kleene(mask, pc.less_equal(table["id"], max_id))
    return table.filter(pc.fill_null(mask, False))


def read_rows(folders: Sequence[Path], columns: Sequence[str]) -> pa.Table:
    import pyarrow.dataset as pads

    tables = [pads.dataset(str(f), format="parquet").to_table(columns=list(columns)) for f in folders]
    return pa.concat_tables(tables)


@dataclass(frozen=True)
class TrainingSet:
    """The examples a run trains on, known before training starts (for lineage and step counts)."""

    ids: list[str]  # sorted
    max_id: str | None  # the cap passed to `keep_rows` in the workers (None: no cap)


def training_set(prepared_dir: str | os.PathLike, cfg: SFTDataConfig) -> TrainingSet:
    table = keep_rows(read_rows(split_dirs(prepared_dir, cfg.splits), ["id", "score", "sibling_percentile"]), cfg)
    ids = sorted(table["id"].to_pylist())
    if len(ids) != len(set(ids)):
        raise SFTDataError("example ids repeat across the training splits")
    max_id = None
    if cfg.max_examples is not None and cfg.max_examples < len(ids):
        ids = ids[: cfg.max_examples]
        max_id = ids[-1]
    if not ids:
        raise SFTDataError(f"no training example passes the filters (splits {list(cfg.splits)}, min_score {cfg.min_score})")
    return TrainingSet(ids=ids, max_id=max_id)


def validation_rows(prepared_dir: str | os.PathLike, cfg: SFTDataConfig, num_workers: int) -> tuple[list[str], list[str]]:
    """(contexts, replies) of the first eval examples by id, filtered like the training rows, a
    multiple of `num_workers` long so every worker evaluates an equal share (ZeRO-3 forward passes
    are collective)."""
    if cfg.val_split is None or cfg.eval_examples == 0:
        return [], []
    table = keep_rows(read_rows(split_dirs(prepared_dir, [cfg.val_split]), ROW_COLUMNS), cfg).sort_by("id")
    table = table.slice(0, min(cfg.eval_examples, table.num_rows) // num_workers * num_workers)
    return table["context"].to_pylist(), table["reply"].to_pylist()
