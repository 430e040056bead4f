"""The frozen-LM log-prob scorer: the logprobs of given tokens under a model that never trains.

PPO's reference role uses it for the KL term (the initial policy, or model.reference); evaluation
uses it for log-likelihood scoring. Plain transformers, no DeepSpeed: it only runs no-grad forwards,
so there is no optimizer state or gradient to shard, and one replica per actor is the simplest
correct thing. A model too large for one device would need sharded inference (DeepSpeed ZeRO-3
inference or tensor parallelism): not implemented.
"""

from __future__ import annotations

import torch

from karma_ray.engines.forward import causal_lm_forward, disable_dropout, resolve_device, resolve_dtype, row_chunks, select_rows, sequences_to
from karma_ray.types import SequenceBatch, response_logprobs


class LogprobScorer:
    def __init__(self, model_path: str, *, dtype: str = "float32", micro_batch_size: int = 16, seed: int = 0,
                 trust_remote_code: bool = False) -> None:
        from karma_ray.models.hf import load_causal_lm

        if micro_batch_size < 1:
            raise ValueError("micro_batch_size must be >= 1")
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

    @torch.no_grad()
    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """(B, R) logprobs of the response tokens (0 on padding), float32 on CPU."""
        out = []
        for index in row_chunks(len(batch), self.micro_batch_size):
            micro = sequences_to(select_rows(batch, index), self.device)
            out.append(response_logprobs(causal_lm_forward(self.module, micro), micro).float().cpu())
        return torch.cat(out)
