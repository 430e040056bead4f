"""The DeepSpeed settings, one shape for every stage that trains (`deepspeed.*` in configs/rm and
configs/sft). Imports only the standard library and karma_ray.config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from karma_ray.config import ConfigError, option


@dataclass(frozen=True)
class DeepSpeedConfig:
    zero_stage: Literal[0, 2, 3] = option(
        0,
        "0: plain torch (DistributedDataParallel across workers). 2: DeepSpeed ZeRO-2 (optimizer state and "
        "gradients sharded). 3: also the parameters. On CPU: DS_ACCELERATOR=cpu, gloo and torch AdamW (no op builds).",
    )
    offload_optimizer: bool = option(False, "ZeRO: keep the optimizer state in CPU memory (GPU runs).")

    def validate(self) -> None:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("deepspeed.offload_optimizer needs deepspeed.zero_stage 2 or 3")

    @property
    def enabled(self) -> bool:
        return self.zero_stage > 0
