"""Forward passes of a Hugging Face causal LM, shared by the policy, the frozen scorer and evaluation:
device and dtype resolution, dropout off, row selection and chunking of a `SequenceBatch`, and the
logits of one batch with positions that count real tokens only (left padding, as vLLM sees it), and
the response logprobs of a batch, micro-batch by micro-batch.

Imports only torch and karma_ray.types.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from karma_ray.types import SequenceBatch, response_logprobs

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device() -> torch.device:
    """cuda:0 when a GPU is visible (Ray gives each actor its own CUDA_VISIBLE_DEVICES), else CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ModelConfig.dtype -> torch dtype; fp16 on CPU is refused (no CPU fp16 kernels for training)."""
    if name not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(TORCH_DTYPES)}")
    if name == "float16" and device.type == "cpu":
        raise ValueError("model.dtype=float16 needs a GPU; use float32 or bfloat16 on CPU")
    return TORCH_DTYPES[name]


def disable_dropout(module: torch.nn.Module) -> None:
    """Zero every dropout, as TRL and OpenRLHF do for PPO: the rollout-time logprobs (computed
    without dropout) must equal the first training forward's, or the ratio starts away from 1.
    Covers nn.Dropout modules and float attributes such as Llama's `attention_dropout`."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.Dropout):
            sub.p = 0.0
        for attr, value in list(vars(sub).items()):
            if "dropout" in attr and isinstance(value, float):
                setattr(sub, attr, 0.0)


def select_rows(batch: SequenceBatch, index: torch.Tensor) -> SequenceBatch:
    return SequenceBatch(batch.input_ids[index], batch.attention_mask[index], batch.response_mask[index], batch.prompt_len)


def sequences_to(batch: SequenceBatch, device: torch.device) -> SequenceBatch:
    return SequenceBatch(
        batch.input_ids.to(device), batch.attention_mask.to(device), batch.response_mask.to(device), batch.prompt_len
    )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T) long: the token-id rows left-padded to the longest."""
    ids = [torch.as_tensor(list(r), dtype=torch.long) for r in rows]
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_id, padding_side="left")
    return input_ids, pad_sequence([torch.ones_like(t) for t in ids], batch_first=True, padding_side="left")


def row_chunks(n: int, size: int) -> Iterator[torch.Tensor]:
    """Index tensors of consecutive rows [0, size), [size, 2 size), ... of n rows."""
    for start in range(0, n, size):
        yield torch.arange(start, min(start + size, n))


def causal_lm_forward(module: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """(B, P + R, V) logits; positions count real tokens only (left padding, as vLLM sees the prompt)."""
    return module(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
    ).logits


@torch.no_grad()
def batch_logprobs(module: torch.nn.Module, batch: SequenceBatch, micro_batch_size: int,
                   device: torch.device) -> torch.Tensor:
    """(B, R) logprobs of the response tokens (0 on padding), float32 on CPU, `micro_batch_size` rows a forward."""
    micros = (sequences_to(select_rows(batch, index), device) for index in row_chunks(len(batch), micro_batch_size))
    return torch.cat([response_logprobs(causal_lm_forward(module, micro), micro).float().cpu() for micro in micros])
