"""What the DeepSpeed-trained roles (policy, critic) share: process group, engine, PPO update loop,
full-weight gathering and resumable RNG state.

The roles hold a `ZeroTrainer` (composition, not a base class) and give it a per-micro-batch loss.

How one PPO update is split (the part that makes N workers equal one process):
every rank receives the SAME full `Experience`, shuffles it with a generator seeded identically on
all ranks, cuts the same global minibatches of `algo.minibatch_size` rows (`Experience.minibatches`),
and takes rows rank, rank + N, ... of each (`Experience.shard`). One minibatch = one optimizer step.
Because every rank sees the whole minibatch, it knows the loss normaliser of the whole minibatch
(its response-token count for "token-mean", its non-empty sequences for the "seq-mean" modes)
without a collective, and scales each micro-batch's loss by its share of it
(`loss_share`): the gradient summed over micro-batches and ranks is then exactly the gradient of
`karma_ray.algo`'s loss over the whole minibatch, whatever the micro-batch size or worker count.
(Sharding the batch first and shuffling per rank, as OpenRLHF does, averages per-rank means instead:
the same only when all ranks have equally many tokens.)

Imports torch and karma_ray.types only; DeepSpeed is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from karma_ray.rlhf.perf import FlopsModel, device_peak_flops, model_flops_utilization
from karma_ray.engines.forward import disable_dropout, row_chunks, sequences_to
from karma_ray.training.extensions import clear_stale_build_locks
from karma_ray.training.learner import deepspeed_json, iter_full_state
from karma_ray.types import Experience, UpdateStats

RNG_FILE = "rng_rank{rank}.pt"
DS_TAG = "deepspeed"  # the DeepSpeed checkpoint tag: one fixed sub-folder per checkpoint folder


# ------------------------------------------------------------------------------------------------
# The process group
# ------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free a moment ago, for the process group's rendezvous, which binds it
    seconds later (after the worker's imports).

    Taken below the kernel's ephemeral range and above Ray's worker ports (10002-19999 by default):
    a port from bind-to-0 is an ephemeral one, which any outgoing connection opened in between may
    take (seen: EADDRINUSE in a CI run, while Ray started the other roles). Falls back to bind-to-0."""
    low, high = 20_000, _ephemeral_low() - 1
    rng = random.Random()
    for _ in range(64):
        port = rng.randint(low, high) if high > low else 0
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("", port))
                return s.getsockname()[1]
        except OSError:
            continue
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, device: torch.device) -> None:
    """Join the role's process group: gloo on CPU, NCCL on GPU, through DeepSpeed's comm layer.

    DeepSpeed reads RANK/WORLD_SIZE/MASTER_*/LOCAL_RANK from the environment (without them it tries
    MPI discovery), so they are set for this process; LOCAL_RANK is 0 because each Ray actor sees only
    its own GPU. A process that already joined a group (in-process tests create several workers)
    keeps it if the world size agrees: torch.distributed can be initialised once per process.
    """
    if device.type == "cpu":
        # Must precede the first `import deepspeed` of the process (it picks its accelerator then).
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # A run killed while DeepSpeed compiled its CPU op leaves a lock that hangs this call forever.
        clear_stale_build_locks()
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized() and (dist.get_world_size() != world_size or dist.get_rank() != rank):
        raise RuntimeError(
            f"this process already belongs to a process group (rank {dist.get_rank()} of "
            f"{dist.get_world_size()}); cannot join as rank {rank} of {world_size}"
        )
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0",
        MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    deepspeed.init_distributed(
        dist_backend="nccl" if device.type == "cuda" else "gloo",
        auto_mpi_discovery=False,
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        verbose=False,
    )
    # DeepSpeed logs every config key at INFO on each rank; keep warnings only.
    deepspeed.utils.logger.setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------------
# Model and optimizer setup
# ------------------------------------------------------------------------------------------------


def optimizer_param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only, not on biases and norm scales (1-D tensors), the
    usual transformer recipe (BERT, GPT-2, OpenRLHF's get_optimizer_grouped_parameters)."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def micro_plan(minibatch_size: int, world_size: int, micro_batch_size: int) -> tuple[int, int]:
    """(rows of one minibatch per rank, micro-batches per rank per optimizer step)."""
    if minibatch_size % world_size:
        raise ValueError(f"algo.minibatch_size ({minibatch_size}) must be a multiple of the {world_size} workers")
    rows = minibatch_size // world_size
    return rows, math.ceil(rows / micro_batch_size)


# ------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------


def experience_to(exp: Experience, device: torch.device) -> Experience:
    """`exp` with its tensors on `device` (absent ones stay None; `info` is shared)."""
    tensors = {name: v.to(device) for name, v in vars(exp).items() if isinstance(v, torch.Tensor)}
    return replace(exp, sequences=sequences_to(exp.sequences, device), **tensors)


def loss_count(mask: torch.Tensor, loss_agg: str) -> float:
    """What `karma_ray.algo.aggregate_loss` divides by: response tokens ("token-mean") or sequences
    with at least one response token (the "seq-mean-*" modes)."""
    if loss_agg == "token-mean":
        return float((mask != 0).sum())
    if loss_agg in ("seq-mean-token-sum", "seq-mean-token-mean"):
        return float((mask != 0).any(dim=-1).sum())
    raise ValueError(f"unknown loss_agg {loss_agg!r}")


def loss_share(part_mask: torch.Tensor, whole_mask: torch.Tensor, loss_agg: str) -> float:
    """Weight of a micro-batch's aggregated loss in the loss of the whole minibatch it came from:
    sum over the micro-batches of share * aggregate(part) == aggregate(whole). 0 for an empty part."""
    whole = loss_count(whole_mask, loss_agg)
    return loss_count(part_mask, loss_agg) / whole if whole > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# The update loop
# ------------------------------------------------------------------------------------------------

# A micro-batch loss: (micro-batch on the device) -> (aggregated scalar loss, detached 0-dim metrics).
MicroLoss = Callable[[Experience], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class ZeroTrainer:
    """A DeepSpeed engine plus the bookkeeping every trainable role needs.

    `shuffle` is seeded identically on every rank of the role (all ranks must cut the same
    minibatches); the global torch/python/numpy RNGs are seeded per rank.
    """

    engine: Any
    rank: int
    world_size: int
    device: torch.device
    minibatch_size: int
    micro_batch_size: int
    loss_agg: str
    shuffle: torch.Generator
    flops: FlopsModel  # the model's FLOPs per token
    peak_flops: Optional[float]  # the device's peak FLOP/s at the training dtype (None: no MFU)

    @classmethod
    def build(cls, module: torch.nn.Module, trainer: Any, algo: Any, rank: int, world_size: int, device: torch.device,
              dtype: torch.dtype, shuffle_seed: int) -> "ZeroTrainer":
        """The role's fp32 `module` (dropout off) under deepspeed.initialize with torch AdamW, per its
        TrainerConfig and AlgoConfig. DeepSpeed casts it for bf16/fp16 and keeps fp32 master weights in
        the ZeRO optimizer. `shuffle_seed` must be the same on every rank."""
        import deepspeed

        disable_dropout(module)
        flops = FlopsModel.of(module)  # before DeepSpeed partitions the parameters (ZeRO-3)
        rows, micro_steps = micro_plan(algo.minibatch_size, world_size, trainer.micro_batch_size)
        optimizer = torch.optim.AdamW(optimizer_param_groups(module, trainer.weight_decay), lr=trainer.lr)
        config = deepspeed_json(
            trainer.deepspeed.zero_stage, min(trainer.micro_batch_size, rows), micro_steps, trainer.grad_clip, dtype,
            world_size=world_size, offload_optimizer=trainer.deepspeed.offload_optimizer,
        )
        engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
        return cls(engine, rank, world_size, device, algo.minibatch_size, trainer.micro_batch_size, algo.loss_agg,
                   torch.Generator().manual_seed(shuffle_seed), flops, device_peak_flops(device, dtype))

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def train(self, experience: Experience, epochs: int, micro_loss: MicroLoss) -> tuple[dict[str, float], UpdateStats]:
        """`epochs` passes of shuffled minibatches, one optimizer step each (see the module docstring).

        Returns (terms, update): the metrics of `micro_loss` averaged over the optimizer steps (each
        reduced over a minibatch the way the loss is, then averaged over steps; identical on every
        rank), which the role turns into its typed stats, and the UpdateStats: grad_norm (before
        clipping), lr, steps, and the speed of the group (`_speed`: wall seconds with the GPU
        synchronised at both ends, real tokens, model TFLOP/s per worker from karma_ray.rlhf.perf, and
        MFU where the device's peak is known, i.e. not on CPU).
        """
        if len(experience) % self.minibatch_size:
            raise ValueError(
                f"{len(experience)} sequences do not split into minibatches of {self.minibatch_size} "
                "(algo.minibatch_size must divide the sequences per iteration)"
            )
        rows, micro_steps = micro_plan(self.minibatch_size, self.world_size, self.micro_batch_size)
        self.module.train()
        # Metrics and grad norms stay on the device until the end: a `.cpu()`/`float()` per micro-batch
        # would wait for the GPU each time and stall the kernel queue.
        sums: dict[str, torch.Tensor] = {}
        grad_norms: list[Any] = []
        tokens, flops = 0, 0.0
        self._synchronize()
        start = time.perf_counter()
        for _ in range(epochs):
            for minibatch in experience.minibatches(self.minibatch_size, generator=self.shuffle):
                whole_mask = minibatch.sequences.response_mask
                part = minibatch.shard(self.rank, self.world_size)
                chunks = list(row_chunks(len(part), self.micro_batch_size))
                assert len(chunks) == micro_steps and len(part) == rows
                for k, index in enumerate(chunks):
                    micro_cpu = part.select(index)
                    micro_tokens = int(micro_cpu.sequences.attention_mask.sum())
                    tokens += micro_tokens
                    flops += self.flops.train_flops(micro_tokens, micro_cpu.sequences.input_ids.shape[1])
                    share = loss_share(micro_cpu.sequences.response_mask, whole_mask, self.loss_agg)  # on CPU: no sync
                    micro = experience_to(micro_cpu, self.device)
                    # The boundary triggers ZeRO's gradient reduction and the optimizer step.
                    self.engine.set_gradient_accumulation_boundary(k == len(chunks) - 1)
                    loss, metrics = micro_loss(micro)
                    # x world_size: DeepSpeed AVERAGES gradients over ranks, the shares already sum to 1
                    # over ranks; scale_wrt_gas=False: the shares already do the accumulation average.
                    self.engine.backward(loss * (share * self.world_size), scale_wrt_gas=False)
                    if k == len(chunks) - 1 and self.engine.zero_optimization_stage() == 0:
                        # Without ZeRO, DeepSpeed clips but does not keep the norm: take it here, after
                        # the boundary's gradient all-reduce and before the step clips.
                        stage0_norm = _grad_norm(self.module)
                    self.engine.step()
                    for name, value in metrics.items():
                        sums[name] = sums.get(name, 0.0) + share * value.detach().double()
                grad_norms.append(stage0_norm if self.engine.zero_optimization_stage() == 0 else self.engine.get_global_grad_norm())
        self._synchronize()
        seconds = time.perf_counter() - start
        grad_norms = [float(n) if n is not None else float("nan") for n in grad_norms]
        steps = len(grad_norms)
        names = sorted(sums)
        terms = {n: total / steps for n, total in zip(names, self._all_reduce([float(sums[n]) for n in names]))}
        update = UpdateStats(grad_norm=sum(grad_norms) / steps, lr=float(self.engine.optimizer.param_groups[0]["lr"]),
                             steps=steps, **self._speed(tokens, flops, seconds))
        return terms, update

    def _speed(self, tokens: int, flops: float, seconds: float) -> dict[str, float]:
        """The update's speed over the whole group, the same on every rank: train_tokens (real tokens,
        all ranks and epochs), train_s (the slowest rank's seconds), train_tflops (model TFLOP/s per
        worker) and mfu (only where the device's peak is known)."""
        all_tokens, all_flops = self._all_reduce([float(tokens), flops])
        (seconds,) = self._all_reduce([seconds], "MAX")
        out = {"train_tokens": all_tokens, "train_s": seconds}
        if seconds > 0:
            per_worker = all_flops / self.world_size
            mfu = model_flops_utilization(per_worker, seconds, self.peak_flops)  # None: UpdateStats' default
            out.update(train_tflops=per_worker / seconds / 1e12, mfu=mfu)
        return out

    def _all_reduce(self, values: list[float], op: str = "SUM") -> list[float]:
        """`values` reduced over the role's ranks, in float64 (on the device: NCCL reduces GPU tensors only)."""
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        if self.world_size > 1:
            t = t.to(self.device)
            dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return t.cpu().tolist()

    def _synchronize(self) -> None:
        """Wait for queued GPU work, so wall-clock seconds measure the work (no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def full_state(self) -> Iterator[tuple[str, torch.Tensor]]:
        """`iter_full_state` of the module: under ZeRO-3 EVERY rank must run it to the end."""
        return iter_full_state(self.module, self.engine.zero_optimization_stage() == 3)

    def save(self, path: str | os.PathLike) -> None:
        """DeepSpeed checkpoint (module, optimizer and scheduler states, per-rank ZeRO shards) plus
        this rank's RNG states; all ranks call it with the same path."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(path), tag=DS_TAG, client_state={})
        torch.save(rng_state(self.shuffle), path / RNG_FILE.format(rank=self.rank))

    def load(self, path: str | os.PathLike) -> None:
        """Restore what `save` wrote (same world size)."""
        path = Path(path)
        rng_path = path / RNG_FILE.format(rank=self.rank)
        if not rng_path.exists():
            raise FileNotFoundError(f"{rng_path} missing: not a checkpoint of a role with rank {self.rank}")
        load_path, _ = self.engine.load_checkpoint(str(path), tag=DS_TAG)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path / DS_TAG}")
        set_rng_state(torch.load(rng_path, weights_only=True), self.shuffle)


def _grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """The global L2 norm of the module's gradients (a 0-dim tensor on their device)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


# ------------------------------------------------------------------------------------------------
# RNG state (exact resume)
# ------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    """All RNG states of this process as tensors and plain Python values, so `torch.load(...,
    weights_only=True)` reads them back without unpickling arbitrary objects."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "shuffle": shuffle.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], shuffle: torch.Generator) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
