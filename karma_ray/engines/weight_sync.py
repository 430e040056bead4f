"""Policy -> rollout weight sync: the only module that knows both weight formats.

Trainer side: the policy worker streams its weights as buckets, each a dict of Hugging Face parameter
names ("model.layers.0.self_attn.q_proj.weight") to full, unsharded CPU tensors
(`weight_buckets(bucket_mib)`, a generator: Ray streams each yielded bucket as one ObjectRef).

Engine side: HF `generate` takes those names as they are (`HFRollout`). vLLM fuses and repacks them
(q/k/v -> qkv_proj, gate/up -> gate_up_proj, CPU kernels repack the matrices), and on CPU neither
`model.load_weights()` after start nor tensors sent through `collective_rpc` work (STACK.md). So a
vLLM engine writes the buckets as a safetensors checkpoint into a staging folder and asks its workers
to reload from there (`stage_checkpoint` here, `VLLMRollout.update_weights` in workers/rollout.py):
vLLM's own loader then does the renaming, sharding (tensor parallel) and repacking.

    report = sync_weights(policy_actor, rollout_actors, bucket_mib=256, timeout_s=300)

`sync_weights` fans out one `update_weights(*buckets)` per engine and waits once, with a deadline: a
dead or stuck source or engine raises `WeightSyncError` (which engine, how long, how many buckets)
instead of hanging the PPO loop.

Imports torch and safetensors only; ray is imported inside `sync_weights` and the test source.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import torch

from karma_ray.types import EngineUpdate

MIB = 2**20

# Files of a model folder that a vLLM reload may read besides the weights (config, tokenizer,
# generation defaults). Copied into each staging folder so it is a complete checkpoint on its own.
_CHECKPOINT_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


class WeightSyncError(RuntimeError):
    """A weight sync that failed or did not finish in time (the PPO loop must not hang on it)."""


@dataclass
class SyncReport:
    """What one `sync_weights` call did, for the driver's log."""

    num_buckets: int
    bucket_mib: float
    gather_s: float  # until the source had streamed every bucket
    total_s: float  # until every engine had loaded them
    engines: list[EngineUpdate] = field(default_factory=list)  # each engine's `update_weights` report

    @property
    def bytes(self) -> int:
        return self.engines[0].bytes if self.engines else 0

    @property
    def apply_s(self) -> float:
        """The slowest engine's own load time (0 when no engine reported)."""
        return max((e.total_s for e in self.engines), default=0.0)


# --------------------------------------------------------------------------------------------------
# Trainer side: buckets


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """Group (name, tensor) pairs, in order, into dicts of at most `bucket_bytes` bytes.

    A tensor is added to the open bucket while the bucket stays within `bucket_bytes`; one that does
    not fit closes the bucket and opens the next. A tensor larger than `bucket_bytes` on its own gets
    a bucket of its own (never split: engines load whole parameters). No empty buckets.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named_tensors:
        if name in bucket:
            raise ValueError(f"parameter {name!r} appears twice")
        n = tensor_bytes(tensor)
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor
        size += n
    if bucket:
        yield bucket


# --------------------------------------------------------------------------------------------------
# Engine side: checking names, staging a checkpoint for vLLM


def merge_buckets(buckets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """All buckets of one sync as one dict; a name sent twice is an error (which copy would win?)."""
    merged: dict[str, torch.Tensor] = {}
    for i, bucket in enumerate(buckets):
        if not isinstance(bucket, Mapping):
            raise WeightSyncError(f"bucket {i} is a {type(bucket).__name__}, expected a dict of name -> tensor")
        for name, tensor in bucket.items():
            if name in merged:
                raise WeightSyncError(f"parameter {name!r} arrived twice in one sync (bucket {i})")
            if not isinstance(tensor, torch.Tensor):
                raise WeightSyncError(f"parameter {name!r} is a {type(tensor).__name__}, expected a tensor")
            merged[name] = tensor
    return merged


def check_update(
    tensors: Mapping[str, torch.Tensor],
    expected_shapes: Mapping[str, tuple[int, ...]],
    ignorable: Iterable[str] = (),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Validate an update against the engine's parameters -> (tensors to load, names ignored).

    Unknown names and wrong shapes raise `WeightSyncError` naming them: both mean the trainer and the
    engine disagree on the architecture or the naming (e.g. a DeepSpeed/PEFT prefix), and loading
    anyway would leave the engine sampling from a model the trainer does not have. `ignorable` names
    (e.g. `lm_head.weight` of a tied-embedding model, which the checkpoint does not store) are dropped.
    A subset of the expected names is a valid partial update: the rest keep their current values;
    none of them is a ValueError.
    """
    ignorable = set(ignorable)
    unknown = sorted(n for n in tensors if n not in expected_shapes and n not in ignorable)
    if unknown:
        known = sorted(expected_shapes)[:3]
        raise WeightSyncError(
            f"{len(unknown)} parameter name(s) unknown to the rollout engine, e.g. {unknown[:5]} "
            f"(the engine's names look like {known}): the policy and the engine disagree on the model"
        )
    bad_shapes = [
        f"{n}: got {tuple(t.shape)}, engine has {tuple(expected_shapes[n])}"
        for n, t in tensors.items()
        if n in expected_shapes and tuple(t.shape) != tuple(expected_shapes[n])
    ]
    if bad_shapes:
        raise WeightSyncError(f"{len(bad_shapes)} parameter(s) with the wrong shape: {bad_shapes[:5]}")
    kept = {n: t for n, t in tensors.items() if n in expected_shapes}
    if not kept:
        raise ValueError("update_weights got no parameters of this model")
    return kept, sorted(set(tensors) - set(kept))


def checkpoint_tensor_index(model_dir: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors file, shape) of every tensor in a model folder (reads headers only)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir} (rollout engines load safetensors only)")
    index: dict[str, tuple[str, tuple[int, ...]]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                index[name] = (str(f), tuple(handle.get_slice(name).get_shape()))
    return index


def stage_checkpoint(
    tensors: Mapping[str, torch.Tensor],
    stage_dir: str | os.PathLike,
    side_files_from: str | os.PathLike,
    previous: Optional[Mapping[str, tuple[str, tuple[int, ...]]]] = None,
    dtype: Optional[torch.dtype] = None,
    shard_bytes: int = 1024 * MIB,
) -> dict[str, Any]:
    """Write `tensors` as a safetensors checkpoint that vLLM can reload from.

    `previous` (name -> (file, shape), as `checkpoint_tensor_index` returns) is the engine's current
    checkpoint: names missing from `tensors` are copied from it, so a partial update still leaves a
    complete checkpoint (vLLM's reload processes fused layers such as qkv_proj as a whole; a layer
    given only some of its inputs would be rebuilt with garbage in the rest). Tensors are cast to
    `dtype` (the engine's) before writing, which halves the bytes for a bf16 engine.
    Returns {"bytes", "carried", "files", "index"} where `index` describes the new checkpoint.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(stage_dir)
    out.mkdir(parents=True, exist_ok=False)
    for name in _CHECKPOINT_SIDE_FILES:
        src = Path(side_files_from) / name
        if src.exists():
            shutil.copy2(src, out / name)

    missing_by_file: dict[str, list[str]] = {}
    for n, (file, _) in (previous or {}).items():
        if n not in tensors:
            missing_by_file.setdefault(file, []).append(n)
    carried: dict[str, torch.Tensor] = {}
    for file, names in missing_by_file.items():
        with safe_open(file, framework="pt") as handle:
            carried.update({n: handle.get_tensor(n) for n in names})

    prepared: list[tuple[str, torch.Tensor]] = []
    seen_storage: set[int] = set()
    for name, tensor in list(tensors.items()) + list(carried.items()):
        t = tensor.detach().cpu()  # no copy when already on the CPU
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)  # no copy when already in `dtype`
        t = t.contiguous()
        if t.untyped_storage().data_ptr() in seen_storage:  # tied weights share storage; safetensors refuses shared tensors
            t = t.clone()
        seen_storage.add(t.untyped_storage().data_ptr())
        prepared.append((name, t))
    shards = list(iter_buckets(prepared, shard_bytes)) or [{}]  # shards are buckets of `shard_bytes`

    index: dict[str, tuple[str, tuple[int, ...]]] = {}
    files = []
    for i, shard in enumerate(shards):
        path = out / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        files.append(str(path))
        index.update({name: (str(path), tuple(t.shape)) for name, t in shard.items()})
    return {"bytes": sum(tensor_bytes(t) for _, t in prepared), "carried": len(carried), "files": files, "index": index}


def make_staging_dir(prefix: str = "karma_rollout_") -> Path:
    """A fresh folder for an engine's staged checkpoints, under the temp dir (TMPDIR).

    Named after the owning process; folders left by processes that no longer exist (an engine
    actor killed with `ray.kill` runs no cleanup) are removed first, so crashed runs do not pile up.
    """
    import tempfile

    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{prefix}*_*"):
        pid = old.name[len(prefix) :].split("_", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}_", dir=root))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


# --------------------------------------------------------------------------------------------------
# Driver side


def sync_weights(source_actor, engines: Sequence, bucket_mib: float, timeout_s: float) -> SyncReport:
    """Stream the source's weight buckets into every engine; raise `WeightSyncError` instead of hanging.

    `source_actor.weight_buckets(bucket_mib)` is a generator method: called with
    `num_returns="streaming"`, Ray stores each yielded bucket as its own object as soon as it is
    yielded. Once the stream ends, every engine gets ALL the refs as top-level arguments of one
    `update_weights(*refs)` call (Ray resolves top-level refs, so the engine receives the dicts), fanned
    out to all engines, then one wait with the remaining time. The engines load nothing until every
    bucket has arrived, so a sync that fails midway leaves them on the previous weights.
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    start = time.monotonic()
    deadline = start + timeout_s

    def elapsed() -> float:
        return time.monotonic() - start

    stream = source_actor.weight_buckets.options(num_returns="streaming").remote(bucket_mib)
    refs = []
    while True:
        ready, _ = ray.wait([stream], num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
        if not ready:
            raise WeightSyncError(
                f"weight sync timed out after {elapsed():.1f}s (timeout {timeout_s}s) while the source streamed "
                f"its weights: {len(refs)} bucket(s) of {bucket_mib} MiB received, the next did not come"
            )
        try:
            refs.append(next(stream))
        except StopIteration:
            break
        except RayActorError as err:  # the source died before its stream began
            raise WeightSyncError(f"weight source died after {len(refs)} bucket(s): {err}") from err
    gather_s = elapsed()
    if not refs:
        raise WeightSyncError("the weight source streamed no buckets (an empty model?)")

    pending = {engine.update_weights.remote(*refs): i for i, engine in enumerate(engines)}
    _, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=max(deadline - time.monotonic(), 0.0))
    if not_ready:
        late = sorted(pending[r] for r in not_ready)
        for r in not_ready:  # a queued call should not run later and load stale weights
            with contextlib.suppress(Exception):  # best effort; the error below is what matters
                ray.cancel(r)
        raise WeightSyncError(
            f"weight sync timed out after {elapsed():.1f}s (timeout {timeout_s}s): engine(s) {late} of "
            f"{len(engines)} did not finish loading {len(refs)} bucket(s) of {bucket_mib} MiB "
            f"(the source streamed them in {gather_s:.1f}s); those engines are in an unknown state: replace them"
        )
    reports = []
    for ref, i in pending.items():  # all ready, in engine order
        try:
            reports.append(ray.get(ref, timeout=max(deadline - time.monotonic(), 1.0)))
        except (RayActorError, RayTaskError, GetTimeoutError) as err:
            raise WeightSyncError(
                f"engine {i} of {len(engines)} failed to load {len(refs)} bucket(s) after {elapsed():.1f}s: "
                f"{type(err).__name__}: {_last_line(err)}"
            ) from err
    return SyncReport(
        num_buckets=len(refs), bucket_mib=float(bucket_mib), gather_s=gather_s, total_s=elapsed(), engines=reports
    )


def _last_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    # A RayTaskError's text is a traceback; its last line names the original error.
    return lines[-1] if lines else type(err).__name__
