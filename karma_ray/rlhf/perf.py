"""Model FLOPs and MFU of a training step: how much of the accelerator's peak the update used.

MFU (model FLOPs utilization, PaLM, Chowdhery et al. 2022, appendix B) counts the FLOPs the model
needs per token, not what the hardware executed: activation recomputation (gradient checkpointing)
and padding are not credited, so MFU is comparable across those settings.

    flops per trained token = 6 * N  +  12 * L * d * T

N: parameters that take part in a matrix product (every weight except the input embedding, which is
a lookup; a tied LM head counts once); 6 = 2 (multiply-add) x 3 (forward + two backward products).
12 * L * d * T: the attention score and value products over a context of T positions (the full
T x T square, as PaLM counts it, although a causal mask needs only half). Tokens are the real
(unpadded) tokens trained on.

Pure Python over numbers and a torch module; no Ray, no CUDA needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Dense bf16/fp16 tensor-core peaks in TFLOP/s from the vendors' datasheets (no sparsity).
# Matched against torch.cuda.get_device_name(), most specific name first.
PEAK_TFLOPS_16BIT: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)


def train_flops_per_token(matmul_params: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """6 N + 12 L d T (module docstring): model FLOPs of a forward + backward pass, per token."""
    if min(matmul_params, num_layers, hidden_size, seq_len) < 0:
        raise ValueError("parameter counts and lengths must be >= 0")
    return 6.0 * matmul_params + 12.0 * num_layers * hidden_size * seq_len


@dataclass(frozen=True)
class FlopsModel:
    """What `train_flops_per_token` needs to know of a model, read once before DeepSpeed wraps it
    (ZeRO-3 partitions parameters, after which `numel()` of a shard says nothing of the model)."""

    matmul_params: int
    num_layers: int
    hidden_size: int

    @classmethod
    def of(cls, module: torch.nn.Module) -> "FlopsModel":
        """Layers and hidden size from the HF config of `module` (or of its `.backbone`)."""
        for candidate in (module, getattr(module, "backbone", None)):
            cfg = getattr(candidate, "config", None)
            if cfg is not None and hasattr(cfg, "num_hidden_layers") and hasattr(cfg, "hidden_size"):
                return cls(matmul_param_count(module), int(cfg.num_hidden_layers), int(cfg.hidden_size))
        raise ValueError(f"{type(module).__name__} has no HF config with num_hidden_layers and hidden_size")

    def train_flops(self, tokens: int, seq_len: int) -> float:
        """Model FLOPs of forward + backward over `tokens` real tokens in rows of `seq_len` columns."""
        return tokens * train_flops_per_token(self.matmul_params, self.num_layers, self.hidden_size, seq_len)


def matmul_param_count(module: torch.nn.Module) -> int:
    """Parameters of `module` that enter a matrix product: all, minus the input embedding matrix
    unless it is tied to the output layer (then its product is the LM head's, counted once).

    Works for HF causal LMs and for backbones wrapped with a head (the critic's ValueModel)."""
    total = sum(p.numel() for p in module.parameters())  # a tied (shared) parameter is listed once
    embeddings = _input_embeddings(module)
    if embeddings is None:
        return total
    output = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    tied = output is not None and getattr(output, "weight", None) is embeddings.weight
    return total if tied else total - embeddings.weight.numel()


def _input_embeddings(module: torch.nn.Module) -> Optional[torch.nn.Module]:
    for candidate in (module, getattr(module, "backbone", None)):
        getter = getattr(candidate, "get_input_embeddings", None)
        if getter is not None:
            emb = getter()
            if emb is not None and hasattr(emb, "weight"):
                return emb
    return None


def peak_flops(device_name: str, dtype: torch.dtype) -> Optional[float]:
    """The device's dense peak in FLOP/s for `dtype`, or None when unknown (CPUs, fp32, other GPUs):
    MFU is then not reported rather than reported against a guessed peak."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    for name, tflops in PEAK_TFLOPS_16BIT:
        if name in device_name:
            return tflops * 1e12
    return None


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> Optional[float]:
    """`peak_flops` of the CUDA device a worker trains on; None on CPU."""
    if device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(device), dtype)


def model_flops_utilization(flops: float, seconds: float, peak: Optional[float]) -> Optional[float]:
    """flops / (seconds * peak); None when the peak is unknown or no time passed."""
    if peak is None or peak <= 0 or seconds <= 0:
        return None
    return flops / (seconds * peak)
