"""The frozen-LM log-prob scorer: the logprobs of given tokens under a model that never trains.

PPO's reference role uses it for the KL term (the initial policy, or model.reference); evaluation
uses it for log-likelihood scoring. Plain transformers, no DeepSpeed: it only runs no-grad forwards,
so there is no optimizer state or gradient to shard, and one replica per actor is the simplest
correct thing. A model too large for one device would need sharded inference (DeepSpeed ZeRO-3
inference or tensor parallelism): not implemented.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from karma_ray.engines.forward import batch_logprobs, disable_dropout, left_pad, resolve_device, resolve_dtype
from karma_ray.types import SequenceBatch


class LogprobScorer:
    def __init__(self, model_path: str, *, dtype: str = "float32", micro_batch_size: int = 16, seed: int = 0,
                 trust_remote_code: bool = False, num_threads: int | None = None) -> None:
        from karma_ray.models.hf import load_causal_lm

        if num_threads:
            # As many threads as the actor's CPUs: more OpenMP threads than free cores spin-wait.
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        self.device = resolve_device()
        torch_dtype = resolve_dtype(dtype, self.device)
        self.micro_batch_size = micro_batch_size
        # PPO passes the policy's dtype, so reference and policy logprobs are comparable.
        self.module = load_causal_lm(model_path, dtype=str(torch_dtype).removeprefix("torch."), trust_remote_code=trust_remote_code)
        disable_dropout(self.module)
        self.module.to(self.device).eval().requires_grad_(False)

    def ready(self) -> bool:
        return True

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """(B, R) logprobs of the response tokens (0 on padding), float32 on CPU."""
        return batch_logprobs(self.module, batch, self.micro_batch_size, self.device)

    @torch.no_grad()
    def continuation_logprobs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_length: int,
                              max_batch_tokens: int = 8192) -> list[tuple[float, bool]]:
        """Sum of log p(continuation | context) and whether greedy decoding would produce it, per pair.

        `pairs` are (context_ids, continuation_ids) token lists (the context non-empty). As in
        lm-evaluation-harness's HF model: the model reads (context + continuation)[:-1], cut from the
        LEFT to `max_length` tokens, and the continuation's tokens are scored at the last positions.
        Inputs are batched longest first under `max_batch_tokens` padded tokens, LEFT-padded so every
        continuation ends at the last column and only those columns' logits are computed.

        The tokens that every input starts with (a task's few-shot primer: ~85% of each TruthfulQA
        input) are run once; each batch reads their keys and values from that cache and runs only
        its rows' remaining tokens (`benchmarks/bench_shared_prefix.py` measures the gain).
        """
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        # Rows with the same model input share one forward: a one-token continuation's input is its
        # context alone, so the choices " A" ... " D" of an MMLU question cost one forward, not four
        # (lm-eval's HF model groups them the same way).
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            if not ctx or not cont:
                raise ValueError(f"pair {i}: context and continuation must be non-empty token lists")
            inputs = (list(ctx) + list(cont))[-(max_length + 1):][:-1]
            groups.setdefault(tuple(inputs), []).append((i, list(cont)))
        rows = sorted(groups.items(), key=lambda g: len(g[0]), reverse=True)
        # The shared prefix stops before any continuation's first scored position: those logits are
        # computed in the batches.
        P = max(0, min([shared_prefix_length([inputs for inputs, _ in rows])]
                       + [len(inputs) - max(len(c) for _, c in members) for inputs, members in rows]))
        prefix = self.module(input_ids=torch.tensor([rows[0][0][:P]], device=self.device), use_cache=True).past_key_values if P > 0 else None
        start = 0
        while start < len(rows):
            width = len(rows[start][0]) - P  # the longest input of the batch (rows are sorted)
            size = max(1, min(self.micro_batch_size, max_batch_tokens // max(width, 1)))
            batch = rows[start:start + size]
            start += size
            K = max(len(c) for _, members in batch for _, c in members)
            input_ids, attention_mask = left_pad([inputs[P:] for inputs, _ in batch], 0)  # (B, T - P)
            positions = P + (attention_mask.cumsum(-1) - 1).clamp(min=0)
            cache = None
            if prefix is not None:  # the forward appends to the cache it reads: each batch gets a copy
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(len(batch))
                attention_mask = torch.cat([torch.ones(len(batch), P, dtype=attention_mask.dtype), attention_mask], -1)  # (B, T)
            logits = self.module(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                 position_ids=positions.to(self.device), past_key_values=cache, use_cache=cache is not None,
                                 logits_to_keep=K).logits
            logprobs = torch.log_softmax(logits[:, -K:, :].float(), dim=-1).cpu()  # (B, K, V)
            argmax = logprobs.argmax(-1)  # (B, K)
            for b, (_, members) in enumerate(batch):
                for i, cont in members:
                    # the continuation's tokens are predicted at the last len(cont) positions
                    targets = torch.as_tensor(cont)  # (C,)
                    steps = torch.arange(K - len(cont), K)  # (C,)
                    total = float(logprobs[b, steps, targets].sum())
                    out[i] = (total, bool((argmax[b, steps] == targets).all()))
        return out


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all `rows` have in common."""
    shortest = min(rows, key=len, default=[])
    for n, token in enumerate(shortest):
        if any(r[n] != token for r in rows):
            return n
    return len(shortest)
