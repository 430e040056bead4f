"""`karma experiment` on a two-node Ray cluster on this machine, losing its second node mid-trial.

`ray.cluster_utils.Cluster`: a head and a second node, 2 logical CPUs each (the machine has 2 cores:
the split is of Ray's resources, the processes share the cores). The PPO matrix has two cells that
run at once (1.85 CPUs each, so they need both nodes). While they run, the second node is removed:
the cell that had its policy, critic or reference there fails and Ray Tune retries it on the head
(a rollout engine or reward model lost there is replaced by the PPO driver instead), and the
experiment completes with every cell finished and the retry recorded in the report."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multinode]

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "corpus.synthetic_comments=6000",
    "rm.variants=[text]",
    "exposure.conditions=[base]",
    "ppo.seeds=[0, 1]",
    "ppo.max_failures=2",
    "ppo.overrides=['run.iterations=6', 'run.checkpoint_every=0', 'run.prompts_per_iteration=16', 'placement.ready_timeout_s=1200']",
    "eval.overrides=['tasks.names=[karma]', 'tasks.limit=16', 'tasks.limits=[]', 'karma.max_new_tokens=16', "
    "'scoring.cpus_per_replica=1', 'generation.cpus_per_engine=1', 'stats.n_resamples=300']",
    "ray.num_cpus=null",
    "ray.object_store_memory_gb=null",
]


def test_experiment_on_two_nodes_survives_losing_one(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from karma_ray.config import load_config
    from karma_ray.experiment.config import ExperimentConfig
    from karma_ray.experiment.run import run_experiment

    if ray.is_initialized():
        ray.shutdown()  # another test's local cluster: this test brings its own
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 400 * 2**20, "include_dashboard": True, "dashboard_host": "127.0.0.1"})
    second = cluster.add_node(num_cpus=2, object_store_memory=400 * 2**20)
    cluster.wait_for_nodes()
    out = tmp_path / "exp"
    removed = {}

    def remove_second_node_mid_trial() -> None:
        # mid-trial: a cell is iterating and some cell's placement group has a bundle on the second node
        from ray.util import placement_group_table

        target = second.node_id
        deadline = time.monotonic() + 3000
        while time.monotonic() < deadline:
            running = [p for p in (out / "ppo").glob("*/metrics.jsonl") if p.stat().st_size > 0] if (out / "ppo").is_dir() else []
            if not running:  # before the matrix the driver may still be connecting: no Ray calls from here
                time.sleep(1)
                continue
            try:
                there = [i["name"] for i in placement_group_table().values() if i.get("state") == "CREATED"
                         and (i.get("name") or "").startswith("karma-") and target in (i.get("bundles_to_node_id") or {}).values()]
            except Exception:  # noqa: BLE001 - a busy GCS: ask again
                there = []
            if running and there:
                removed.update(node=target[:12], groups=there, iterating=[p.parent.name for p in running])
                cluster.remove_node(second)
                return
            time.sleep(1)

    killer = threading.Thread(target=remove_second_node_mid_trial, daemon=True)
    try:
        cfg = load_config(ExperimentConfig, REPO / "configs/experiment/tiny.yaml", [*OVERRIDES, f"ray.address={cluster.address}"])
        killer.start()
        result = run_experiment(cfg, out)
        killer.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert removed, "no cell ever had roles on the second node while iterating"
    cells = {c["cell"]: c for c in result.results["cells"]}
    assert set(cells) == {"text-base-s0", "text-base-s1"}
    assert result.failed == [] and not any(c["error"] for c in cells.values())
    assert all(c["ppo"]["iterations"] == 6 for c in cells.values())
    # the second node hosted roles of a running cell when it went (seen in the placement group table);
    # a retried cell's record holds the nodes of its last, successful attempt: the head only
    assert removed["groups"] and removed["iterating"], removed
    assert all(removed["node"] not in c["role_nodes"] for c in cells.values() if c["retries"]), cells
    # Losing the node failed a cell (Tune retried it) or killed some of its replaceable actors (a
    # rollout engine or a reward model, which the PPO driver replaces and resyncs in place).
    restarts = {name: max(json.loads(x).get("actor_restarts", 0) for x in
                          (out / "ppo" / name / "metrics.jsonl").read_text().splitlines()) for name in cells}
    assert sum(c["retries"] for c in cells.values()) + sum(restarts.values()) >= 1, (cells, restarts)
    print("retries:", {n: c["retries"] for n, c in cells.items()}, "actor restarts:", restarts, "removed:", removed)
    report = (out / "report.md").read_text()
    assert "| retries |" in report.replace("retries | error", "retries |")
    assert json.loads((out / "results.json").read_text())["cells"] == result.results["cells"]
