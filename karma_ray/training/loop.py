"""The one Ray Train worker loop of every stage that trains (reward models and SFT), and its driver half.

Each stage hands the loop a `TrainTask` (its model, data and loss) and a `LoopPlan` (how long, how
often); the loop owns everything else, the same way for both:

    1. restore   trainer_state.json + the task's weights and optimizer from Ray Train's latest
                 checkpoint (a `--resume` rerun, or a restart after a worker died: FailureConfig)
    2. before    evaluate once per run (plan.eval_before), kept across restarts
    3. train     per epoch: the task's micro-batches (those consumed before the checkpoint are
                 skipped), grad_accum of them per optimizer step; every log_every_steps a report,
                 every checkpoint_every_steps a report with a checkpoint; the test-only fault
                 injector after each step (training/faults.py)
    4. epoch end evaluate + report + checkpoint (plan.eval_every_epoch: a reward model's epochs)
    5. after     evaluate (plan.eval_after) and a final checkpoint, unless step 4 just wrote it

Every report has the same keys: step, epoch (1-based, of the step), loss, lr, grad_norm, samples_per_s,
tokens_per_s, samples_seen, and `val_<metric>` when it evaluated. Sums are all-reduced over workers,
so every number is the whole run's, not rank 0's. Every rank takes part in every evaluation and save
(ZeRO-3 gathers; each DeepSpeed rank writes its own optimizer partition). Each rank reads a fixed
shard of the data (`fixed_shards`), so a run and its resumption see the same rows in the same order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True)
class StepSums:
    """One optimizer step on one worker: sums, so that workers and steps add up."""

    loss_sum: float  # the loss's numerator (reply-token NLL sum for SFT; the step's mean loss for a RM)
    loss_count: float  # its denominator (reply tokens; 1 per step for a RM)
    samples: int  # sequences the step's forward saw
    tokens: int  # model-input tokens (0 where not counted)
    grad_norm: float
    lr: float


class TrainTask(Protocol):
    """What a stage gives the loop (a plain class in the stage's module: RewardTask, SFTTask)."""

    def micro_batches(self, epoch: int, skip: int) -> Iterator[Any]:
        """The epoch's micro-batches after the first `skip` (every worker yields the same number)."""

    def train_step(self, micro_batches: Sequence[Any]) -> StepSums: ...

    def evaluate(self) -> Optional[dict]:
        """Held-out metrics (a flat dict of numbers), or None when there is nothing to evaluate."""

    def save(self, folder: Path, writer: bool) -> None:
        """Weights (writer rank) and the optimizer's state into a checkpoint folder."""

    def load(self, folder: Path) -> None: ...


@dataclass(frozen=True)
class LoopPlan:
    stage: str  # the console prefix: [train-rm], [sft]
    epochs: int
    total_steps: Optional[int] = None  # stop after this many optimizer steps (None: after `epochs`)
    grad_accum: int = 1
    log_every_steps: int = 0  # 0: reports only at epoch ends / the end
    checkpoint_every_steps: int = 0  # 0: checkpoints only at epoch ends / the end
    eval_before: bool = False
    eval_every_epoch: bool = False
    eval_after: bool = False
    progress_file: Optional[str] = None  # rank 0 writes the step count here after every step (console.follow_steps)


@dataclass
class LoopState:
    """Where a run is; written as trainer_state.json into every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (0-based)
    micro_in_epoch: int = 0  # micro-batches of `epoch` consumed
    samples_seen: int = 0  # all workers
    tokens_seen: int = 0  # all workers
    restarts: int = 0  # times the run was restored from a checkpoint
    resumed_at_step: int = 0  # the step the latest restore started from (0: never restored)
    resumed_at_epoch: int = 0  # epochs complete at that restore
    val_before: Optional[dict] = None
    val_after: Optional[dict] = None
    history: list = field(default_factory=list)  # every report, in order
    finished: bool = False

    def write(self, folder: Path) -> None:
        (Path(folder) / TRAINER_STATE).write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def read(cls, folder: Path) -> "LoopState":
        return cls(**json.loads((Path(folder) / TRAINER_STATE).read_text()))


def all_reduce_sum(values: Sequence[float], device: Any = "cpu") -> list[float]:
    """Sum over workers (on the learner's device: NCCL reduces GPU tensors only)."""
    import torch

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


class _Window:
    """Step sums since the last report, reduced over workers when a report reads them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = [0.0, 0.0, 0.0, 0.0]  # loss_sum, loss_count, samples, tokens
        self.started = time.perf_counter()
        self.last: Optional[StepSums] = None

    def add(self, s: StepSums) -> None:
        self.sums = [a + b for a, b in zip(self.sums, (s.loss_sum, s.loss_count, s.samples, s.tokens))]
        self.last = s


class RayTrainSession:
    """The loop's two calls into Ray Train (inside a TorchTrainer worker)."""

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Optional[Path]]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as folder:
            yield Path(folder) if folder is not None else None

    def report(self, metrics: dict, folder: Optional[Path], name: str) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name if folder is not None else None)


class LocalSession:
    """The same two calls in one process, one worker (tests, debugging a task): every checkpoint is
    copied to `root/NAME`, and the latest one is what a new loop on the same root restores."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.reports: list[tuple[dict, Optional[str]]] = []  # (metrics, checkpoint name)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Optional[Path]]:
        latest = self.root / "latest"
        yield self.root / latest.read_text() if latest.is_file() else None

    def report(self, metrics: dict, folder: Optional[Path], name: str) -> None:
        if folder is not None:
            shutil.copytree(folder, self.root / name)
            (self.root / "latest").write_text(name)
        self.reports.append((metrics, name if folder is not None else None))


def run_loop(task: TrainTask, plan: LoopPlan, *, rank: int, device: Any = "cpu",
             after_step: Callable[[int], None] = lambda step: None, session: Any = None) -> LoopState:
    """Steps 1-5 of the module docstring; returns the final state. `session`: RayTrainSession (the
    default, inside a Ray Train worker) or LocalSession."""
    session = session or RayTrainSession()

    # 1. restore
    state = LoopState()
    with session.latest_checkpoint() as folder:
        if folder is not None:
            state = LoopState.read(folder)
            task.load(folder)
            state.restarts += 1
            state.finished = False
            state.resumed_at_step, state.resumed_at_epoch = state.step, state.epoch
            if rank == 0:
                print(f"[{plan.stage}] resumed at step {state.step} (epoch {state.epoch + 1})", flush=True)

    # 2. before
    if plan.eval_before and state.val_before is None:
        state.val_before = task.evaluate()
        if rank == 0 and state.val_before and "loss" in state.val_before:
            print(f"[{plan.stage}] val loss before {state.val_before['loss']:.4f}", flush=True)

    window = _Window()
    checkpointed_at = -1  # the step of the last checkpoint this process wrote

    def report(epoch: int, val: Optional[dict], with_checkpoint: bool, final: bool = False, epoch_end: bool = False) -> None:
        nonlocal checkpointed_at
        loss_sum, loss_count, samples, tokens = all_reduce_sum(window.sums, device)
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        state.samples_seen += int(samples)
        state.tokens_seen += int(tokens)
        last = window.last
        record = {
            "step": state.step, "epoch": epoch,
            "loss": loss_sum / loss_count if loss_count else math.nan,
            "lr": last.lr if last else math.nan, "grad_norm": last.grad_norm if last else math.nan,
            "samples_per_s": samples / elapsed if samples else math.nan,
            "tokens_per_s": tokens / elapsed if tokens else math.nan,
            "samples_seen": state.samples_seen,
            **{f"val_{k}": v for k, v in (val or {}).items() if v is None or isinstance(v, (int, float))},
        }
        state.history.append(record)
        if rank == 0:
            shown = " ".join(f"{k} {record[k]:.4f}" for k in ("loss", "val_loss", "val_spearman", "val_pairwise_accuracy")
                             if isinstance(record.get(k), (int, float)) and math.isfinite(record[k]))
            rate = f" ({record['samples_per_s']:.1f} samples/s)" if samples else ""
            print(f"[{plan.stage}] step {state.step} epoch {epoch} {shown}{rate}", flush=True)
        window.reset()
        reported = {k: (math.nan if v is None else v) for k, v in record.items()}  # the history keeps None
        if not with_checkpoint:
            session.report(reported, None, "")
            return
        name = (f"epoch_{epoch:04d}" if epoch_end else f"checkpoint_{state.step:06d}") + (
            f"_r{state.restarts}" if state.restarts and not epoch_end else "") + ("_final" if final else "")
        with tempfile.TemporaryDirectory() as tmp:
            task.save(Path(tmp), writer=rank == 0)
            if rank == 0:
                state.write(Path(tmp))
            session.report(reported, Path(tmp) if any(Path(tmp).iterdir()) else None, name)
        checkpointed_at = state.step

    def done() -> bool:
        return plan.total_steps is not None and state.step >= plan.total_steps

    # 3. train (the last step's numbers go into the final report, step 5)
    while state.epoch < plan.epochs and not done():
        pending: list = []
        for micro in task.micro_batches(state.epoch, state.micro_in_epoch):
            pending.append(micro)
            state.micro_in_epoch += 1
            if len(pending) < plan.grad_accum:
                continue
            window.add(task.train_step(pending))
            pending = []
            state.step += 1
            if plan.progress_file and rank == 0:
                # the step count for the driver's bar. On a cluster without a shared output folder the
                # worker cannot reach it: the bar then stays still, and training goes on.
                with contextlib.suppress(OSError):
                    Path(plan.progress_file).write_text(f"{state.step}\n")
            after_step(state.step)
            if done():
                break
            log = plan.log_every_steps > 0 and state.step % plan.log_every_steps == 0
            save = plan.checkpoint_every_steps > 0 and state.step % plan.checkpoint_every_steps == 0
            if log or save:
                report(state.epoch + 1, None, with_checkpoint=save)
        if done():
            break
        # 4. epoch end (a trailing part of an optimizer step is dropped: every worker took the same full steps)
        state.epoch, state.micro_in_epoch = state.epoch + 1, 0
        if plan.eval_every_epoch:
            report(state.epoch, task.evaluate(), with_checkpoint=True, epoch_end=True)

    # 5. after
    if plan.eval_after:
        state.val_after = task.evaluate()
        if rank == 0 and state.val_after and "loss" in state.val_after:
            print(f"[{plan.stage}] val loss after {state.val_after['loss']:.4f}", flush=True)
    state.finished = True
    if checkpointed_at != state.step or window.last is not None or plan.eval_after:
        report(state.epoch + (1 if state.micro_in_epoch else 0), state.val_after, with_checkpoint=True, final=True)
    return state


# ---------------------------------------------------------------------------------------------
# The driver half: one TorchTrainer shape for every stage that trains
# ---------------------------------------------------------------------------------------------


def worker_env(use_gpu: bool) -> dict[str, str]:
    """Environment of the Ray Train workers: DeepSpeed's accelerator, the driver's HF_HUB_OFFLINE (on
    when it has none), no tokenizer threads (the worker's torch threads have the CPUs), the test-only fault switch."""
    from karma_ray.training.faults import forwarded_env

    return {"DS_ACCELERATOR": "cuda" if use_gpu else "cpu", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "TOKENIZERS_PARALLELISM": "false", **forwarded_env()}


def fixed_shards(datasets: dict, split: Sequence[str], num_workers: int) -> dict:
    """Each dataset named in `split` cut into `num_workers` fixed shards, `NAME@RANK`, of equal row
    counts (the remainder dropped); the others as they are, read whole by every worker.

    Why not Ray Train's own split: its `streaming_split` hands blocks to whichever worker asks first,
    so which rows a rank trains on changed from run to run (and a resumed run's skipped micro-batches
    were not the ones it had trained on). Here the rows are materialized in their read order and
    split by position: the same config gives every rank the same rows in the same order."""
    out = {}
    for name, ds in datasets.items():
        if name not in split:
            out[name] = ds
            continue
        ds.context.execution_options.preserve_order = True
        for rank, part in enumerate(ds.split(num_workers, equal=True)):
            out[f"{name}@{rank}"] = part
    return out


def worker_context(threads: int) -> tuple[int, int, Any]:
    """This Ray Train worker's (rank, world size, torch device: a CPU one where it has no GPU), its
    torch threads set to `threads`."""
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    torch.set_num_threads(threads)
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def worker_shard(name: str) -> Any:
    """This Ray Train worker's fixed shard of a dataset that `torch_trainer` split (a DataIterator)."""
    import ray.train

    return ray.train.get_dataset_shard(f"{name}@{ray.train.get_context().get_world_rank()}")


def torch_trainer(loop_per_worker: Callable[[dict], None], loop_config: dict, *, name: str, storage_path: str,
                  num_workers: int, use_gpu: bool, cpus_per_worker: float, max_failures: int, keep_checkpoints: int,
                  datasets: dict, split: Sequence[str], callbacks: Optional[list] = None) -> Any:
    """The TorchTrainer of a training stage (gloo on CPU, NCCL on GPU). The datasets named in `split`
    are cut into fixed per-rank shards (`fixed_shards`; a worker reads its own with `worker_shard`),
    the others are read whole by each worker."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        datasets=fixed_shards(datasets, split, num_workers),
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env(use_gpu)},
        ),
    )
