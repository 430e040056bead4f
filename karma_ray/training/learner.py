"""One data-parallel replica's model and optimizer, the same for the reward model and SFT.

    learner = Learner(module, param_groups, deepspeed=cfg.deepspeed, micro_batch_size=16, grad_accum=2,
                      grad_clip=1.0, schedule=lambda step: min(1.0, step / 100), device=device)
    step = learner.step(micro_batches, loss_fn)    # one optimizer step: loss_fn(model, micro) -> (loss, out)
    state = learner.full_state_dict()               # every rank calls it (ZeRO-3 gathers)
    learner.save(folder, writer=rank == 0); learner.load(folder)

The optimizer is torch AdamW and the schedule a LambdaLR in every mode, so the update rule is the
same with or without DeepSpeed (no DeepSpeed optimizer op is built on CPU: STACK.md; the one C++
op DeepSpeed does build there, its shm comm op, is in extensions.py):
- `deepspeed.zero_stage` 0: the bare module, wrapped in DistributedDataParallel when a process
  group is up (Ray Train starts one); gradients of the micro-batches accumulate, the last one syncs.
- 2 or 3: `deepspeed.initialize` with the config from `deepspeed_json` (the PPO roles build theirs
  from the same function); DeepSpeed accumulates over `grad_accum` micro-batches, clips and steps.

Checkpoint layout inside a checkpoint folder: `deepspeed/state/` (DeepSpeed's own: this rank's ZeRO
partition of the Adam moments and the schedule; every rank writes) or `optimizer.pt` (the writer
rank). The weights are the caller's to write, from `full_state_dict()`, in its export format.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from karma_ray.training.config import DeepSpeedConfig
from karma_ray.training.extensions import clear_stale_build_locks

DS_DIR = "deepspeed"
DS_TAG = "state"
OPTIMIZER_FILE = "optimizer.pt"


def deepspeed_json(zero_stage: int, micro_batch_size: int, grad_accum: int, grad_clip: float, dtype: torch.dtype,
                   world_size: Optional[int] = None, offload_optimizer: bool = False) -> dict[str, Any]:
    """The DeepSpeed config of every engine in karma_ray (everything else at DeepSpeed's defaults)."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,  # 0.0: off
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        # torch AdamW instead of DeepSpeed's fused/cpu Adam: no op to JIT-build on CPU (STACK.md),
        # and the same update rule as the plain torch path (the equivalence tests rely on it).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if world_size is not None:
        config["train_batch_size"] = micro_batch_size * grad_accum * world_size
    return config


def iter_full_state(module: torch.nn.Module, zero3: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full CPU tensor) of every parameter and persistent buffer, as `state_dict` names them;
    a tensor shared under two names (tied embeddings) is yielded once, under its first name. Under
    ZeRO-3 each parameter is all-gathered, so EVERY rank must run this to the end."""
    seen: set[int] = set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if zero3 and hasattr(tensor, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                full = tensor.detach().to("cpu", copy=True)
        else:
            full = tensor.detach().to("cpu", copy=True)
        yield name, full


@dataclass(frozen=True)
class StepResult:
    grad_norm: float  # the global gradient norm before clipping
    lr: float  # of the first parameter group, after the step
    outputs: list  # loss_fn's second value for each micro-batch, in order


class Learner:
    def __init__(self, module: torch.nn.Module, param_groups: list[dict], *, deepspeed: DeepSpeedConfig,
                 micro_batch_size: int, grad_accum: int = 1, grad_clip: float = 0.0,
                 schedule: Optional[Callable[[int], float]] = None, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.module = module  # the bare model: what is exported
        self.device = torch.device(device)
        self.grad_accum = grad_accum
        self.grad_clip = grad_clip
        self.zero_stage = deepspeed.zero_stage
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        module.to(self.device)
        optimizer = torch.optim.AdamW(param_groups, betas=betas, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule or (lambda step: 1.0))
        self.engine = None
        if deepspeed.enabled:
            if self.device.type == "cpu":
                clear_stale_build_locks()  # see training/extensions.py: a killed build hangs DeepSpeed's start
            import deepspeed as ds

            config = deepspeed_json(deepspeed.zero_stage, micro_batch_size, grad_accum, grad_clip, dtype,
                                    offload_optimizer=deepspeed.offload_optimizer)
            self.engine, self.optimizer, _, self.scheduler = ds.initialize(
                model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=not self.distributed)
            self.model = self.engine
        else:
            self.optimizer, self.scheduler = optimizer, scheduler
            self.model = torch.nn.parallel.DistributedDataParallel(module) if self.distributed else module

    def step(self, micro_batches: Sequence[Any], loss_fn: Callable[[Any, Any], tuple[torch.Tensor, Any]]) -> StepResult:
        """One optimizer step. `loss_fn(model, micro)` returns (the micro-batch's mean loss, anything);
        the step's loss is the mean over the micro-batches (and over workers, by DDP or ZeRO)."""
        n = len(micro_batches)
        if n == 0:
            raise ValueError("a step needs at least one micro-batch")
        if self.engine is not None and n != self.grad_accum:
            raise ValueError(f"DeepSpeed accumulates exactly {self.grad_accum} micro-batches a step, got {n}")
        outputs = []
        for i, micro in enumerate(micro_batches):
            if self.engine is not None:
                loss, out = loss_fn(self.engine, micro)
                self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
                self.engine.step()  # steps the optimizer at the accumulation boundary only
            else:
                defer_sync = self.distributed and i < n - 1
                with self.model.no_sync() if defer_sync else contextlib.nullcontext():
                    loss, out = loss_fn(self.model, micro)
                    (loss / n).backward()
            outputs.append(out)
        if self.engine is not None:
            norm = self.engine.get_global_grad_norm()
            grad_norm = float(norm) if norm is not None else math.nan
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip or math.inf))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return StepResult(grad_norm=grad_norm, lr=float(self.scheduler.get_last_lr()[0]), outputs=outputs)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights on CPU (gathered under ZeRO-3: every rank must call it)."""
        return dict(iter_full_state(self.module, self.zero_stage == 3))

    def save(self, folder: str | Path, writer: bool) -> None:
        """The optimizer's checkpoint into `folder` (see the module docstring); every rank calls it."""
        folder = Path(folder)
        if self.engine is not None:
            self.engine.save_checkpoint(str(folder / DS_DIR), tag=DS_TAG, save_latest=False)
        elif writer:
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}, folder / OPTIMIZER_FILE)

    def load(self, folder: str | Path) -> None:
        """Restore what `save` wrote. Under DeepSpeed this restores the module too; without it the
        caller loads the weights (before or after: the optimizer state does not hold them)."""
        folder = Path(folder)
        if self.engine is not None:
            if not (folder / DS_DIR / DS_TAG).is_dir():
                raise RuntimeError(f"checkpoint {folder} has no DeepSpeed state ({DS_DIR}/{DS_TAG}/): was it written "
                                   "with deepspeed.zero_stage 0?")
            loaded, _ = self.engine.load_checkpoint(str(folder / DS_DIR), tag=DS_TAG)
            if loaded is None:
                raise RuntimeError(f"DeepSpeed could not load {folder / DS_DIR / DS_TAG}")
            return
        path = folder / OPTIMIZER_FILE
        if not path.is_file():
            raise RuntimeError(f"checkpoint {folder} has no {OPTIMIZER_FILE}: was it written under DeepSpeed?")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
