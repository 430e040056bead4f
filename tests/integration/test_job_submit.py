"""`ray job submit` against a real Ray head started here (`ray start --head` on 127.0.0.1): a stage
submitted as a job runs on that cluster, its outputs are checked, and the head is stopped by its
own process group: the machine-wide stop command would end every other run's Ray processes too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def ray_head(tmp_path):
    """A one-node cluster of our own: (dashboard address, environment for the `ray` CLI)."""
    gcs, dash, agent_http, agent_grpc, metrics, runtime_env, client = free_ports(7)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    # Token authentication on, for the head and for the CLI calls (which would otherwise not send the
    # token in ~/.ray/auth_token and be refused): the shipped default, kept in the test.
    env["RAY_AUTH_MODE"] = "token"
    log = open(tmp_path / "ray_head.log", "w")
    # Ray's socket paths live under --temp-dir and must stay under 107 bytes: pytest's tmp_path is too deep.
    ray_tmp = Path(tempfile.mkdtemp(prefix="krh-", dir="/tmp"))
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent_http}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         f"--ray-client-server-port={client}", "--num-cpus=2", "--object-store-memory=300000000",
         f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            probe = subprocess.run([str(RAY), "job", "list", "--address", address], env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                break
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not come up: {probe.stderr[-1500:]}\n{(tmp_path / 'ray_head.log').read_text()[-1500:]}")
            time.sleep(2)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head and every process it started share its session
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        time.sleep(2)
        try:
            os.killpg(head.pid, signal.SIGKILL)  # stragglers of the session (workers), if any
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_stage_submitted_as_a_job_runs_on_the_head(ray_head, tmp_path):
    from karma_ray.data.synth import write_synthetic_corpus

    address, env = ray_head
    corpus, out = tmp_path / "corpus", tmp_path / "prepared"
    write_synthetic_corpus(corpus, 1500, seed=5)
    submit = subprocess.run(
        [str(RAY), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
         "python", "-m", "jobs.prepare", str(corpus), "--output", str(out), "--config", "configs/data/synthetic.yaml",
         "ray.num_cpus=null", "ray.object_store_memory_gb=null", "ray.progress_bars=false"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in (submit.stdout + submit.stderr).lower()
    manifest = json.loads((out / "manifest.json").read_text())
    summary = json.loads((corpus / "synth_summary.json").read_text())
    assert manifest["records_read"] == summary["comments_written"]
    assert manifest["examples_written"] == summary["clean_comments"]
    assert manifest["records_read"] == manifest["records_malformed"] + sum(manifest["dropped"].values()) + manifest["examples_written"]
    # the job joined the head's cluster (RAY_ADDRESS inside the job) instead of starting its own
    jobs = subprocess.run([str(RAY), "job", "list", "--address", address], env=env, capture_output=True, text=True)
    assert "jobs.prepare" in jobs.stdout and "succeeded" in jobs.stdout.lower()
