"""Every shipped YAML: starts with the command that runs it, loads and validates with its config
class, and every cluster config keeps the dashboard on loopback."""

from pathlib import Path

import pytest
import yaml

from karma_ray.config import PrepareConfig, load_config
from karma_ray.rlhf.config import PPOConfig

REPO = Path(__file__).resolve().parents[2]

def config_class(stage: str, name: str):
    """(class, overrides that fill the paths a file leaves to the command line)."""
    if stage == "data":
        return PrepareConfig, []
    if stage == "ppo":
        if name.startswith("sweep"):
            from karma_ray.rlhf.sweep import SweepPPOConfig

            return SweepPPOConfig, []  # its validation builds every trial's PPO config
        return PPOConfig, []
    if stage == "rm":
        from karma_ray.reward.config import RewardModelConfig, SweepConfig

        if name.startswith("sweep"):
            return SweepConfig, ["rm.model.backbone=some/backbone"]
        return RewardModelConfig, ["model.backbone=some/backbone"]
    if stage == "sft":
        from karma_ray.sft.config import SFTConfig

        return SFTConfig, []
    if stage == "eval":
        from karma_ray.eval.config import EvalConfig

        return EvalConfig, []
    if stage == "experiment":
        from karma_ray.experiment.config import ExperimentConfig

        return ExperimentConfig, []
    return None, []


def _stage_configs():
    for stage_dir in sorted((REPO / "configs").iterdir()):
        for f in sorted(stage_dir.glob("*.yaml")):
            yield pytest.param(stage_dir.name, f, id=f"{stage_dir.name}/{f.name}")


@pytest.mark.parametrize("stage,path", list(_stage_configs()))
def test_stage_config_starts_with_its_command_and_validates(stage, path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and any(w in first for w in ("karma ", "python -m jobs.", "ray job submit")), first
    cls, overrides = config_class(stage, path.name)
    if cls is None:
        pytest.skip(f"no config class registered here for configs/{stage}")
    cfg = load_config(cls, path, overrides)  # raises ConfigError on any unknown key, wrong type or broken rule
    if stage == "experiment" and not cfg.corpus.inputs:
        from karma_ray.experiment.run import plan_experiment

        plan_experiment(cfg, "/tmp/karma-plan-check")  # every stage config it names loads and validates too


def _dashboard_hosts(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "dashboard-host":
                yield str(v)
            yield from _dashboard_hosts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _dashboard_hosts(v)
    elif isinstance(node, str) and "ray start --head" in node:
        assert "--dashboard-host=127.0.0.1" in node, node
        yield "127.0.0.1"


@pytest.mark.parametrize("path", sorted((REPO / "cluster").rglob("*.yaml")), ids=lambda p: p.name)
def test_cluster_configs_bind_dashboard_to_loopback(path):
    text = path.read_text()
    assert text.startswith("# ")
    doc = yaml.safe_load(text)
    hosts = list(_dashboard_hosts(doc))
    assert hosts and set(hosts) == {"127.0.0.1"}, hosts
    if doc.get("kind") == "RayJob":  # the submitter must reach the job API on loopback
        assert doc["spec"]["submissionMode"] == "SidecarMode"
