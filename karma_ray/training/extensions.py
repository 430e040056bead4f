"""DeepSpeed's JIT-built C++ ops, and the lock a killed build leaves behind.

On CPU, `deepspeed.init_distributed` (and so every DeepSpeed engine: reward model, SFT, the PPO
roles) JIT-builds the `deepspeed_shm_comm` op through torch's cpp_extension. torch guards each build
folder with a bare `lock` file (no owner pid) and a process that finds it waits, polling, forever.
A run killed during that ~2-minute build therefore hangs every later DeepSpeed start on the machine.

Two defences, both here:
- `prebuild_ops()` builds the op at `make setup`, so a run finds it built (ninja no-op, ~0.1 s;
  the build folder is per machine, and a checkout with another venv path rebuilds it once);
- `clear_stale_build_locks()` runs before each DeepSpeed start and removes a lock that no live
  process is building under: the lock is older than `min_age_s` and no process has the build
  folder as its working directory (torch runs ninja, and ninja the compiler, in that folder).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

OP_PREFIX = "deepspeed_"


def _working_dirs() -> set[Path]:
    dirs: set[Path] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            dirs.add(Path(os.readlink(proc / "cwd")))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return dirs


def clear_stale_build_locks(root: Path | None = None, min_age_s: float = 60.0, wait_s: float = 900.0,
                            poll_s: float = 2.0) -> list[Path]:
    """Remove the lock of every DeepSpeed op build folder under `root` that nobody is building in;
    returns the locks removed (each also logged as a warning).

    A lock is stale when it is older than `min_age_s` (between taking the lock and starting ninja
    the builder has no process in the folder yet) and no process has had the folder as its working
    directory on two polls `poll_s` apart (torch removes its own lock a moment after ninja exits;
    removing it first would crash that builder). While a build runs there, a live one or a killed
    run's orphaned compiler (ninja gives each its own process group, so a group kill misses it),
    this waits for it, up to `wait_s`, and then either the builder has removed its lock or it is
    stale."""
    if root is None:
        # torch's JIT build root: TORCH_EXTENSIONS_DIR (ops build directly under it), else
        # ~/.cache/torch_extensions (ops build under a py311_cpu-like folder in it)
        from torch.utils.cpp_extension import get_default_build_root

        root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    root = Path(root)
    if not root.is_dir():
        return []
    pending = set(root.glob(f"*/{OP_PREFIX}*/lock")) | set(root.glob(f"{OP_PREFIX}*/lock"))
    removed: list[Path] = []
    idle_once: set[Path] = set()
    deadline = time.time() + wait_s
    while pending:
        busy = _working_dirs()
        for lock in sorted(pending):
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:  # its builder finished
                pending.discard(lock)
                continue
            if lock.parent.resolve() in busy or age < min_age_s:
                idle_once.discard(lock)
                continue
            if lock not in idle_once:
                idle_once.add(lock)
                continue
            with contextlib.suppress(FileNotFoundError):  # its builder removed it meanwhile
                lock.unlink()
                log.warning("removed a stale build lock %s (%.0f s old, no build running there): a run "
                            "was killed while DeepSpeed compiled %s", lock, age, lock.parent.name)
                removed.append(lock)
            pending.discard(lock)
        if not pending:
            break
        if time.time() > deadline:
            log.warning("a DeepSpeed op build under %s has held its lock for over %.0f s; DeepSpeed "
                        "will wait for it", root, wait_s)
            break
        time.sleep(poll_s)
    return removed


def prebuild_ops() -> Path | None:
    """Build the CPU shm comm op now (what `deepspeed.init_distributed` would build at a run's
    start); returns the built library's folder, or None where DeepSpeed does not use the op."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    clear_stale_build_locks()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    return Path(builder.load(verbose=False).__file__).parent


if __name__ == "__main__":  # `python -m karma_ray.training.extensions`: the Makefile's setup step
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.time()
    folder = prebuild_ops()
    print(f"DeepSpeed CPU ops ready in {time.time() - t0:.0f} s: {folder or 'none needed'}")
