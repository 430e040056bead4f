"""A stand-in weight source for tests: an HF checkpoint served through the policy worker's
interface (`weight_buckets`), so the rollout side and `sync_weights` are tested without DeepSpeed."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from karma_ray.engines.weight_sync import MIB, iter_buckets


class CheckpointWeightSource:
    """Serves an HF checkpoint's weights through the policy worker's interface (`weight_buckets`).

    Lets the rollout side and `sync_weights` be tested without DeepSpeed. `perturb` changes the
    weights deterministically (so a sync demonstrably moves the engine), `response_logprobs`
    recomputes logprobs the way the policy does (`pack_sequences` + one forward + `response_logprobs`).
    """

    def __init__(self, model_dir: str, dtype: str = "float32"):
        from karma_ray.models.hf import load_causal_lm, load_tokenizer

        self.model = load_causal_lm(model_dir, dtype=dtype).eval()
        self.pad_id = load_tokenizer(model_dir).pad_token_id

    def weight_buckets(self, bucket_mib: float) -> Iterator[dict[str, torch.Tensor]]:
        named = ((n, t.detach().clone()) for n, t in self.model.state_dict().items())
        yield from iter_buckets(named, int(bucket_mib * MIB))

    @torch.no_grad()
    def perturb(self, scale: float, seed: int = 0, names: Optional[Sequence[str]] = None) -> float:
        """Add scale * N(0, 1) noise to the named weights (all when None); returns the mean abs change."""
        gen = torch.Generator().manual_seed(seed)
        params = dict(self.model.named_parameters())
        unknown = sorted(set(names or ()) - set(params))
        if unknown:
            raise KeyError(f"no parameters named {unknown}")
        total, count = 0.0, 0
        for name in names if names is not None else list(params):
            p = params[name]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * scale
            p.add_(noise)
            total += noise.abs().sum().item()
            count += noise.numel()
        return total / max(count, 1)

    def tensors(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Copies of the named weights (a partial update)."""
        state = self.model.state_dict()
        return {n: state[n].detach().clone() for n in names}

    @torch.no_grad()
    def response_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        from karma_ray.engines.forward import causal_lm_forward
        from karma_ray.types import pack_sequences, response_logprobs

        batch = pack_sequences(prompt_ids, response_ids, self.pad_id)
        logp = response_logprobs(causal_lm_forward(self.model, batch), batch)  # (B, R)
        return [logp[i, : len(r)].tolist() for i, r in enumerate(response_ids)]

    def ping(self) -> bool:
        return True

