"""`karma experiment` end to end on a small matrix, killed midway and rerun.

configs/experiment/tiny.yaml cut down: two reward-model variants (text and the constant control),
the base condition only (no SFT), one seed, 3 PPO iterations, evaluation on the karma task. Run 1
is SIGKILLed (its whole process group, Ray's local cluster included) once the first PPO cell has
finished; run 2 continues it and must skip exactly the finished stages; run 3 finds everything
finished, reruns nothing and writes the same report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "corpus.synthetic_comments=6000",
    "rm.variants=[text, constant]",
    "exposure.conditions=[base]",
    "ppo.overrides=['run.iterations=3', 'run.checkpoint_every=3', 'run.prompts_per_iteration=16']",
    "eval.overrides=['tasks.names=[karma]', 'tasks.limit=24', 'tasks.limits=[]', 'karma.max_new_tokens=16', "
    "'scoring.cpus_per_replica=1', 'generation.cpus_per_engine=1', 'stats.n_resamples=500']",
]
# What a rerun may change in results.json: its own bookkeeping.
BOOKKEEPING = {"wall_s", "stages"}


def _command(output: Path) -> list[str]:
    return [sys.executable, "-m", "karma_ray.cli", "experiment", "--config", str(REPO / "configs/experiment/tiny.yaml"),
            "--output", str(output), *OVERRIDES]


def _leftovers(session_pid: int) -> list[str]:
    """Processes still in the killed run's session (Ray's workers and vLLM engines included)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split(None, 2)[1:2] == [str(session_pid)]]


def test_interrupted_experiment_resumes_and_reruns_as_a_noop(tmp_path):
    out = tmp_path / "exp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    log1 = open(tmp_path / "run1.log", "w")
    run1 = subprocess.Popen(_command(out), cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    first_cell = out / "ppo" / "text-base-s0" / "karma_experiment.json"
    deadline = time.monotonic() + 1500
    while not first_cell.exists():
        assert run1.poll() is None, (tmp_path / "run1.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "the first PPO cell never finished"
        time.sleep(2)
    os.killpg(run1.pid, signal.SIGKILL)
    run1.wait()
    deadline = time.monotonic() + 90  # Ray's processes share the driver's fate, some after a poll interval
    while _leftovers(run1.pid) and time.monotonic() < deadline:
        time.sleep(2)
    assert _leftovers(run1.pid) == []

    run2 = subprocess.run(_command(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert run2.returncode == 0, run2.stderr[-4000:]
    first = json.loads((out / "results.json").read_text())
    # corpus, prepare, models, rm and the finished cell: skipped; the other cell, eval: run
    assert sorted(first["stages"]["skipped"]) == ["corpus", "models", "ppo/text-base-s0", "prepare", "rm"]
    assert sorted(first["stages"]["ran"]) == ["eval", "ppo/constant-base-s0"]
    assert "5 skipped as finished" in run2.stderr
    cells = {c["cell"]: c for c in first["cells"]}
    assert set(cells) == {"text-base-s0", "constant-base-s0"} and not any(c["error"] for c in cells.values())
    assert all(c["ppo"]["iterations"] == 3 and c["node"] for c in cells.values())
    for cell in cells:  # the cell's resumable checkpoint (iteration 3) was written, then dropped once it finished
        assert (out / "ppo" / cell / "policy").is_dir() and not (out / "ppo" / cell / "checkpoints").exists()
    assert {r["task"] for rows in first["downstream"].values() for r in rows} == {"karma"}
    # the console is the story, not Ray's: no worker output, no Tune tables
    assert "(pid=" not in run2.stderr and "Trial status" not in run2.stderr and "Configuration for experiment" not in run2.stderr

    run3 = subprocess.run(_command(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run3.returncode == 0, run3.stderr[-4000:]
    again = json.loads((out / "results.json").read_text())
    assert again["stages"]["ran"] == []
    assert len(again["stages"]["skipped"]) == 7
    assert {k: v for k, v in again.items() if k not in BOOKKEEPING} == {k: v for k, v in first.items() if k not in BOOKKEEPING}
