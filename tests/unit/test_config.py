import dataclasses
from pathlib import Path

import pytest
import yaml

from karma_ray.cli import split_overrides
from karma_ray.config import ConfigError, PrepareConfig, describe, load_config, parse_override, save_resolved


def test_defaults_validate_and_are_frozen():
    cfg = load_config(PrepareConfig)
    assert cfg.threads.max_context_turns == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threads.max_context_turns = 3  # type: ignore[misc]


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("threads:\n  max_context_turns: 6\nfilters:\n  bot_authors: [A, B]\n")
    cfg = load_config(PrepareConfig, path, ["threads.max_context_turns=2", "split.val_fraction=0.2"])
    assert cfg.threads.max_context_turns == 2
    assert cfg.split.val_fraction == 0.2
    assert cfg.filters.bot_authors == ("A", "B")


def test_override_values_are_typed_yaml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[x, y]") == (["a"], ["x", "y"])
    assert parse_override("a=hello=world") == (["a"], "hello=world")


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'threads.max_context_turn'.*did you mean 'threads.max_context_turns'"):
        load_config(PrepareConfig, None, ["threads.max_context_turn=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("threads.max_context_turns=many", "expected an integer"),
        ("threads.max_context_turns=-1", "max_context_turns must be >= 0"),
        ("pairs.shp_rule=1", "expected true/false"),
        ("split.val_fraction=0.96", "val_fraction"),
        ("read.format=xml", "is not one of"),
        ("filters.bot_authors=AutoModerator", "expected a list"),
        ("ray.object_store_memory_gb=0.01", "object_store_memory_gb"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PrepareConfig, None, [override])


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(PrepareConfig, None, ["rows_per_file=5", "rows_per_file.x=1"])


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PrepareConfig, tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(PrepareConfig, None, ["pairs.min_score_ratio=3", "filters.bot_authors=[x]"])
    path = save_resolved(cfg, tmp_path)
    again = load_config(PrepareConfig, path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["pairs"]["min_score_ratio"] == 3.0


def test_every_field_has_help_text():
    lines = describe(PrepareConfig)
    assert any(line.strip().startswith("threads.max_context_turns = 4") for line in lines)
    assert all("#  " not in line and line.rstrip()[-1] != "#" for line in lines), "a field lacks help text"


def test_cli_tells_paths_from_overrides(tmp_path):
    hive = tmp_path / "split=train"
    hive.mkdir()
    paths, overrides = split_overrides([str(hive), "threads.max_context_turns=3", "RC_2005-12.zst"])
    assert paths == [str(hive), "RC_2005-12.zst"]
    assert overrides == ["threads.max_context_turns=3"]


def test_float_fields_accept_exponents_without_a_dot():
    # YAML 1.1 reads `3e-3` as a string; a learning rate written that way must still work.
    from karma_ray.rlhf.config import PPOConfig

    base = ["model.policy=p", "prompts.path=x", "reward.models=[{path: 'rule:constant'}]"]
    cfg = load_config(PPOConfig, None, [*base, "policy.lr=3e-3"])
    assert cfg.policy.lr == 0.003
    with pytest.raises(ConfigError, match="policy.lr: expected a number, got 'fast'"):
        load_config(PPOConfig, None, [*base, "policy.lr=fast"])


def test_a_section_built_with_its_own_defaults_is_described_and_loaded_with_them():
    """PPO's roles default to ZeRO-2 where train-rm's and sft's DeepSpeed section defaults to 0: the
    help shows and the loader gives each section's own default, not the class's."""
    from karma_ray.rlhf.config import PPOConfig
    from karma_ray.reward.config import RewardModelConfig

    ppo = describe(PPOConfig)
    assert any(line.strip().startswith("policy.deepspeed.zero_stage = 2 ") for line in ppo)
    assert any(line.strip().startswith("critic.deepspeed.zero_stage = 2 ") for line in ppo)
    assert any(line.strip().startswith("deepspeed.zero_stage = 0 ") for line in describe(RewardModelConfig))
    # smollm2-cpu.yaml sets the policy to 0 and leaves the critic out: the critic keeps its ZeRO-2
    cfg = load_config(PPOConfig, str(Path(__file__).resolve().parents[2] / "configs/ppo/smollm2-cpu.yaml"), [])
    assert cfg.policy.deepspeed.zero_stage == 0 and cfg.critic.deepspeed.zero_stage == 2
