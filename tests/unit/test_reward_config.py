"""train-rm / sweep-rm configuration: errors exit 2 before Ray starts; the sweep grid; shipped YAMLs load."""

import sys
from pathlib import Path

import pytest

from karma_ray.config import ConfigError, load_config
from karma_ray.reward.cli import sweep_rm_main, train_rm_main
from karma_ray.reward.config import RewardModelConfig, SearchConfig, SweepConfig
from karma_ray.reward.sweep import trial_config, trial_specs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_prepared(tmp_path):
    d = tmp_path / "prepared"
    (d / "manifest.json").parent.mkdir(parents=True)
    (d / "manifest.json").write_text("{}")
    for split in ("train", "val", "test"):
        (d / "examples" / f"split={split}").mkdir(parents=True)
        (d / "examples" / f"split={split}" / "part-0.parquet").write_bytes(b"")
    return d


@pytest.mark.parametrize(
    "args, message",
    [
        (["input.variant=text"], "model.backbone is required"),
        (["input.variant=meta", "train.lrr=1"], "did you mean 'train.lr'"),
        (["input.variant=meta", "input.features=[hour,karma]"], "unknown ['karma']"),
        (["input.variant=meta", "deepspeed.zero_stage=1"], "zero_stage"),
        (["input.variant=meta", "deepspeed.offload_optimizer=true"], "offload_optimizer needs deepspeed.zero_stage 2 or 3"),
        (["input.variant=meta", "loss.pairwise_weight=1"], "sibling pairs are needed"),
    ],
)
def test_train_rm_errors_exit_2_before_ray(fake_prepared, tmp_path, capsys, args, message, ray_start_calls):
    code = train_rm_main(["--data", str(fake_prepared), "--output", str(tmp_path / "out"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert ray_start_calls == []


def test_train_rm_refuses_a_used_output_folder_and_a_non_prepared_input(fake_prepared, tmp_path, capsys):
    (tmp_path / "out" / "ray" / "train_rm").mkdir(parents=True)
    assert train_rm_main(["--data", str(fake_prepared), "--output", str(tmp_path / "out"), "input.variant=constant"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_rm_main(["--data", str(tmp_path), "--output", str(tmp_path / "o2"), "input.variant=constant"]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_sweep_errors_exit_2(fake_prepared, tmp_path, capsys):
    assert sweep_rm_main(["--data", str(fake_prepared), "--output", str(tmp_path / "s"), "search.variants=[meta]", "rm.input.variant=meta", "search.losses=[mse,foo]"]) == 2
    assert "unknown ['foo']" in capsys.readouterr().err
    assert sweep_rm_main(["--data", str(fake_prepared), "--output", str(tmp_path / "s"), "rm.input.variant=meta", "search.variants=[text]"]) == 2
    assert "backbone" in capsys.readouterr().err


def test_help_config_lists_every_key(capsys):
    assert train_rm_main(["--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("input.variant", "loss.pairwise_margin", "deepspeed.zero_stage", "scaling.max_failures"):
        assert key in out


def test_grid_tries_each_control_once():
    search = SearchConfig(variants=("text", "meta", "constant", "random"), losses=("mse", "mse+bt"), lrs=(1e-4, 1e-3))
    specs = trial_specs(search)
    assert len(specs) == 2 * 2 * 2 + 1 + 1  # text and meta: loss x lr; each control once
    assert {s["variant"] for s in specs} == {"text", "meta", "constant", "random"}


def test_trial_config_applies_the_loss_preset_and_is_validated():
    base = load_config(RewardModelConfig, None, ["model.backbone=somewhere"])
    cfg = trial_config(base, {"variant": "meta", "loss": "mse+bt", "lr": 0.01})
    assert (cfg.input.variant, cfg.loss.regression, cfg.loss.pairwise_weight, cfg.train.lr) == ("meta", "mse", 1.0, 0.01)
    bt = trial_config(base, {"variant": "text", "loss": "bt", "lr": 0.01})
    assert bt.loss.regression == "none" and bt.loss.pairwise_on
    with pytest.raises(ConfigError):
        trial_config(load_config(RewardModelConfig, None, ["input.variant=meta"]), {"variant": "text", "loss": "mse", "lr": 0.1})


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "rm").glob("*.yaml")))
def test_shipped_configs_load_and_start_with_their_command(path):
    assert path.read_text().startswith("# karma ")
    cls, key = (SweepConfig, "rm.model.backbone=x") if path.name.startswith("sweep") else (RewardModelConfig, "model.backbone=x")
    load_config(cls, path, [key])


def test_importing_the_reward_package_does_not_import_ray_deepspeed_or_vllm():
    import subprocess

    code = ("import sys, karma_ray.reward.scorer, karma_ray.reward.cli, karma_ray.reward.train, karma_ray.reward.sweep; "
            "print(sorted(m for m in ('ray', 'deepspeed', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_workers_that_cannot_fit_the_local_cluster_are_a_config_error():
    """Ray Train would retry placing such workers forever; the config says so before Ray starts."""
    base = ["rm.model.backbone=x", "rm.ray.num_cpus=2", "rm.scaling.num_workers=1"]
    with pytest.raises(ConfigError, match=r"need 2.1 CPUs but the local cluster has ray.num_cpus=2"):
        load_config(SweepConfig, None, base + ["rm.scaling.cpus_per_worker=2"])  # + 0.1 for the trial
    assert load_config(SweepConfig, None, base + ["rm.scaling.cpus_per_worker=1.9"]).rm.scaling.cpus_per_worker == 1.9
    with pytest.raises(ConfigError, match=r"need 3 CPUs"):
        load_config(RewardModelConfig, None, ["model.backbone=x", "ray.num_cpus=2", "scaling.num_workers=3"])
    assert load_config(RewardModelConfig, None, ["model.backbone=x", "ray.num_cpus=2", "scaling.cpus_per_worker=2"])
    # an existing cluster's size is not known here: no check
    load_config(RewardModelConfig, None, ["model.backbone=x", "ray.address=auto", "scaling.num_workers=8"])
