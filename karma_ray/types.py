"""Typed batches that travel between the PPO roles (OpenRLHF's `Experience`, as dataclasses).

Shape letters: B sequences, P prompt positions (prompts LEFT-padded to P), R response positions
(responses RIGHT-padded to R), so every sequence's response starts at column P. Per-token tensors of
the RL math (logprobs, values, advantages, ...) are (B, R) and line up with `response_mask`, the
mask convention of `karma_ray.algo`.

    input_ids   [pad pad p0 p1 p2 | r0 r1 r2 pad]     (B, P + R)
    response_mask                 [ 1  1  1  0 ]      (B, R)

The logprob of response token j comes from the logits at column P + j - 1 (`response_logprobs`).

Imports torch only (like karma_ray.algo) so every role, test and benchmark can use it without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """How rollout engines sample (the same meaning for vLLM and HF generate)."""

    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy (evaluation; n must be 1). PPO samples at > 0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    n: int = 1  # samples per prompt (GRPO/RLOO groups); rows are prompt-major: p0s0, p0s1, p1s0, ...
    seed: Optional[int] = None


@dataclass
class Generations:
    """What a rollout engine returns: token ids, not text (text is decoded where it is needed).

    Rows are prompt-major when `n > 1`; `group` says which prompt each row came from.
    """

    prompt_ids: list[list[int]]  # B lists of prompt token ids (unpadded)
    response_ids: list[list[int]]  # B lists of generated ids (EOS included when produced)
    sampling_logprobs: list[list[float]]  # B lists: RAW logprob (T=1, no top-k/p) of each generated id
    finished: list[bool]  # B: ended with EOS (False: hit max_new_tokens)
    group: list[int]  # B: index of the source prompt

    def __len__(self) -> int:
        return len(self.response_ids)


def concat_generations(parts: Sequence["Generations"], offsets: Sequence[int]) -> "Generations":
    """Generations of consecutive prompt ranges, joined in order; part i's prompts start at offsets[i]."""
    out = Generations([], [], [], [], [])
    for g, off in zip(parts, offsets):
        out.prompt_ids += g.prompt_ids
        out.response_ids += g.response_ids
        out.sampling_logprobs += g.sampling_logprobs
        out.finished += g.finished
        out.group += [off + k for k in g.group]
    return out


@dataclass
class SequenceBatch:
    """Prompt + response token ids, padded for one forward pass."""

    input_ids: torch.Tensor  # (B, P + R) long
    attention_mask: torch.Tensor  # (B, P + R) long, 0 on padding
    response_mask: torch.Tensor  # (B, R) float, 1 on generated tokens
    prompt_len: int  # P

    @property
    def position_ids(self) -> torch.Tensor:  # (B, P + R): positions count real tokens only (left padding)
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def response_ids(self) -> torch.Tensor:  # (B, R)
        return self.input_ids[:, self.prompt_len :]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pack_sequences(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int
) -> SequenceBatch:
    """Left-pad prompts to the longest prompt, right-pad responses to the longest response."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids:
        raise ValueError("empty batch")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("a prompt has no tokens (the first response token needs a preceding logit)")
    P = max(len(p) for p in prompt_ids)
    R = max(1, max(len(r) for r in response_ids))
    B = len(prompt_ids)
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + R), dtype=torch.long)
    response_mask = torch.zeros((B, R), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[i, P - len(p) : P] = torch.as_tensor(list(p), dtype=torch.long)
        attention_mask[i, P - len(p) : P] = 1
        if r:
            input_ids[i, P : P + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            attention_mask[i, P : P + len(r)] = 1
            response_mask[i, : len(r)] = 1.0
    return SequenceBatch(input_ids, attention_mask, response_mask, P)


def response_logprobs(logits: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """(B, P + R, V) logits of a causal LM over `batch.input_ids` -> (B, R) logprobs of the
    response tokens (0 on padding). Computed in float32 (bf16 log_softmax loses ~1e-2)."""
    P = batch.prompt_len
    shifted = logits[:, P - 1 : -1, :].float()  # (B, R, V): the logit at t predicts token t + 1
    logp = torch.log_softmax(shifted, dim=-1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    return logp * batch.response_mask


@dataclass
class Experience:
    """One PPO batch after scoring: everything the update needs, per token (B, R)."""

    sequences: SequenceBatch
    old_logprobs: torch.Tensor  # (B, R) the policy's logprobs before this update
    ref_logprobs: torch.Tensor  # (B, R) the frozen reference's logprobs
    advantages: torch.Tensor  # (B, R)
    returns: Optional[torch.Tensor] = None  # (B, R) value targets (None without a critic)
    values: Optional[torch.Tensor] = None  # (B, R) critic values at rollout time
    scores: Optional[torch.Tensor] = None  # (B,) sequence-level reward before shaping
    info: dict = field(default_factory=dict)  # per-batch scalars for logging only

    def __len__(self) -> int:
        return len(self.sequences)

    def select(self, index: torch.Tensor) -> "Experience":
        """Rows `index` (a 1-D long tensor) of every tensor field."""

        def pick(x):
            return None if x is None else x[index]

        seq = self.sequences
        return Experience(
            sequences=SequenceBatch(
                seq.input_ids[index], seq.attention_mask[index], seq.response_mask[index], seq.prompt_len
            ),
            old_logprobs=self.old_logprobs[index],
            ref_logprobs=self.ref_logprobs[index],
            advantages=self.advantages[index],
            returns=pick(self.returns),
            values=pick(self.values),
            scores=pick(self.scores),
            info=dict(self.info),
        )

    def minibatches(self, size: int, generator: Optional[torch.Generator] = None) -> Iterator["Experience"]:
        """Shuffled minibatches of `size` rows (the last one may be smaller)."""
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), size):
            yield self.select(order[start : start + size])

    def shard(self, rank: int, world_size: int) -> "Experience":
        """Rows rank, rank + world_size, ... (each data-parallel worker trains on its own shard)."""
        return self.select(torch.arange(rank, len(self), world_size))


# ------------------------------------------------------------------------------------------------
# What a training role and a weight sync report back (typed: they cross actor boundaries)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateStats:
    """One role's update over the whole group: the same on every rank (all-reduced)."""

    grad_norm: float  # mean over optimizer steps (before clipping)
    lr: float
    steps: int  # optimizer steps (epochs x minibatches)
    train_tokens: float  # real tokens forwarded, all ranks and epochs
    train_s: float  # the slowest rank's seconds
    train_tflops: Optional[float] = None  # model TFLOP/s per worker (None: no FLOP model)
    mfu: Optional[float] = None  # only where the device's peak is known


@dataclass(frozen=True)
class PolicyStats:
    """`PolicyWorker.train_step`: step averages of the loss terms, and the update."""

    policy_loss: float  # the clipped surrogate
    clip_frac: float
    approx_kl: float  # rollout policy vs current
    entropy: float
    loss: float  # the total that was minimized
    update: UpdateStats
    kl_loss: Optional[float] = None  # only with algo.kl_placement == "loss"


@dataclass(frozen=True)
class CriticStats:
    """`CriticWorker.train_step`: step averages of the value loss, and the update."""

    value_loss: float
    value_clip_frac: float
    values: float  # mean predicted value
    update: UpdateStats


@dataclass(frozen=True)
class EngineUpdate:
    """One rollout engine's `update_weights` report."""

    engine: str  # "vllm" | "hf"
    version: int  # weight version after this update (1 = first sync)
    buckets: int
    tensors: int  # tensors loaded
    carried: int  # tensors kept from the previous version (a partial update)
    ignored: int  # tensors the engine has no use for (e.g. a tied lm_head)
    bytes: int
    total_s: float
    stage_s: Optional[float] = None  # vLLM: writing the staged checkpoint
    reload_s: Optional[float] = None  # vLLM: its in-place reload

    @property
    def partial(self) -> bool:
        return self.carried > 0
