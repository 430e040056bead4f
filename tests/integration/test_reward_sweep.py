"""`karma sweep-rm`: a Ray Tune sweep of TorchTrainer trials (ASHA), its table and the best model per variant."""

import csv
import subprocess
import sys

import pytest

from karma_ray.reward.cli import sweep_rm_main
from karma_ray.reward.scorer import RewardScorer

pytestmark = pytest.mark.ray


def test_sweep_runs_four_trials_and_exports_the_best_per_variant(ray_cluster, prepared_synthetic, tiny_rm_backbones, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "--data", str(prepared_synthetic), "--output", str(out),
        f"rm.model.backbone={tiny_rm_backbones['bert']}", "rm.model.max_length=64", "rm.ray.progress_bars=false",
        "rm.train.epochs=2", "rm.train.max_train_examples=400", "rm.scaling.cpus_per_worker=1",
        "search.variants=[response,meta,constant,random]", "search.losses=[mse]", "search.lrs=[0.003]",
        "search.asha=true", "search.max_concurrent_trials=1",
    ]
    assert sweep_rm_main(argv) == 0
    printed = capsys.readouterr().out
    assert "best per variant" in printed
    with (out / "results.csv").open() as fh:
        trials = list(csv.DictReader(fh))
    assert len(trials) == 4
    assert sorted(t["variant"] for t in trials) == ["constant", "meta", "random", "response"]
    assert all(t["error"] == "" for t in trials)
    with (out / "best.csv").open() as fh:
        best = {row["variant"]: row for row in csv.DictReader(fh)}
    assert set(best) == {"response", "meta", "constant", "random"}
    # metadata carries the planted delay effect: 0.0915 in one fresh-clone run, above 0.1 in others; runs differ
    # (the order of Ray Data's shards is not fixed), and response/random score ~0
    assert float(best["meta"]["test_spearman"]) > 0.05
    assert best["constant"]["test_spearman"] == ""  # undefined for a constant score
    assert float(best["constant"]["test_pairwise_accuracy"]) == 0.5
    for variant in best:
        assert RewardScorer.from_pretrained(out / "best" / variant).variant == variant


def test_a_worker_reaches_the_state_api_of_its_own_cluster_while_another_runs_on_the_machine(ray_cluster):
    """Ray Train's PlacementGroupCleaner asks the State API, with no address, whether a stopped trial's
    controller is alive. With a second Ray instance on the machine that raised "Found multiple active
    Ray instances", the cleaner's thread died and the trial's CPUs stayed reserved: the next run waited
    forever. init_ray's worker setup hook (ray_utils.pin_cluster_address) names the cluster."""
    import ray

    other = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ray.init(num_cpus=1, include_dashboard=False); "
         "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read(); ray.shutdown()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() not in ("", ray.get_runtime_context().gcs_address)

        @ray.remote(num_cpus=0)
        class Controller:
            def actor_id(self) -> str:
                return ray.get_runtime_context().get_actor_id()

        @ray.remote(num_cpus=0)
        def state_of(actor_id: str) -> str:
            from ray.util.state import get_actor

            return get_actor(actor_id, timeout=60).state

        controller = Controller.remote()
        assert ray.get(state_of.remote(ray.get(controller.actor_id.remote()))) == "ALIVE"
    finally:
        other.communicate("", timeout=120)
