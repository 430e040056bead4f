"""A run killed while DeepSpeed compiles its CPU comm op must not hang the next DeepSpeed start.

Real torch cpp_extension build in a private TORCH_EXTENSIONS_DIR: the builder is killed mid-compile
(its lock stays, as torch leaves it), then a fresh process starts DeepSpeed's process group the way
our workers do (`init_distributed`) and must finish."""

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

BUILD = (
    "from deepspeed.accelerator import get_accelerator\n"
    "get_accelerator().create_op_builder('ShareMemCommBuilder').load(verbose=False)\n"
)
START = (
    "import socket, torch\n"
    "from karma_ray.rlhf.workers.distributed import init_distributed\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()\n"
    "init_distributed(0, 1, '127.0.0.1', port, torch.device('cpu'))\n"
    "print('STARTED')\n"
)


def test_killed_build_does_not_hang_the_next_start(tmp_path):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), DS_ACCELERATOR="cpu")
    builder = subprocess.Popen([sys.executable, "-c", BUILD], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = []
    deadline = time.time() + 120
    while not locks and time.time() < deadline:
        locks = list(tmp_path.glob("**/deepspeed_shm_comm/lock"))
        time.sleep(0.2)
    assert locks, "the build never took its lock"
    time.sleep(3)  # into the compile
    os.killpg(builder.pid, signal.SIGKILL)  # the run's whole process group, as a kill -9 of a job would
    builder.wait()
    assert locks[0].exists(), "torch removed the lock itself; this test no longer reproduces the hang"
    old = time.time() - 120
    os.utime(locks[0], (old, old))  # the next run starts later than min_age_s after the kill

    started = subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=400)
    assert started.returncode == 0, started.stderr[-3000:]
    assert "STARTED" in started.stdout
    assert "stale build lock" in started.stderr
    assert list(tmp_path.glob("**/deepspeed_shm_comm/*.so")), "the op was not rebuilt"
