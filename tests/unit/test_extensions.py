"""The stale build lock that hangs every DeepSpeed start after a run was killed mid-compile."""

import os
import subprocess
import sys
import time

import pytest

from karma_ray.training.extensions import clear_stale_build_locks


def _lock(root, name, age_s):
    folder = root / "py311_cpu" / name
    folder.mkdir(parents=True)
    lock = folder / "lock"
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def test_old_lock_with_no_builder_is_removed_young_and_foreign_ones_kept(tmp_path, caplog):
    stale = _lock(tmp_path, "deepspeed_shm_comm", age_s=3600)
    young = _lock(tmp_path, "deepspeed_other_op", age_s=5)
    foreign = _lock(tmp_path, "someone_elses_op", age_s=3600)
    removed = clear_stale_build_locks(tmp_path, min_age_s=60, wait_s=0.2, poll_s=0.05)
    assert removed == [stale]
    assert not stale.exists() and young.exists() and foreign.exists()
    assert "stale build lock" in caplog.text and "deepspeed_shm_comm" in caplog.text
    young.unlink()
    assert clear_stale_build_locks(tmp_path, min_age_s=60) == []  # nothing left to do


def test_lock_of_a_build_in_progress_is_kept(tmp_path):
    lock = _lock(tmp_path, "deepspeed_shm_comm", age_s=3600)
    # torch runs ninja (and ninja the compiler) with the build folder as working directory
    builder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=lock.parent)
    try:
        deadline = time.time() + 10
        while os.readlink(f"/proc/{builder.pid}/cwd") != str(lock.parent) and time.time() < deadline:
            time.sleep(0.05)
        assert clear_stale_build_locks(tmp_path, min_age_s=60, wait_s=0.3, poll_s=0.05) == []
        assert lock.exists()
    finally:
        builder.kill()
        builder.wait()
    assert clear_stale_build_locks(tmp_path, min_age_s=60, poll_s=0.05) == [lock]


def test_waits_for_a_running_build_then_clears_what_it_left(tmp_path):
    lock = _lock(tmp_path, "deepspeed_shm_comm", age_s=3600)
    # an orphaned compiler: still working in the folder for a second, then gone with the lock left
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"], cwd=lock.parent)
    time.sleep(0.3)
    t0 = time.time()
    assert clear_stale_build_locks(tmp_path, min_age_s=60, wait_s=30, poll_s=0.1) == [lock]
    assert time.time() - t0 >= 0.5  # it waited for the compiler rather than pulling the lock from under it


def test_lock_its_builder_removes_meanwhile_is_not_reported(tmp_path):
    lock = _lock(tmp_path, "deepspeed_shm_comm", age_s=3600)
    builder = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(0.8); os.remove({str(lock)!r})"],
                               cwd=lock.parent)
    time.sleep(0.3)
    assert clear_stale_build_locks(tmp_path, min_age_s=60, wait_s=30, poll_s=0.1) == []
    assert builder.wait() == 0  # the builder's own release found its lock


def test_missing_root_is_no_error(tmp_path):
    assert clear_stale_build_locks(tmp_path / "absent") == []
