"""The one output-folder policy and the completion record every stage writes (karma_ray.stage)."""

from dataclasses import dataclass

import pytest

from karma_ray.stage import (
    STAGE_FILE, OutputExistsError, begin_stage, claim_output, config_digest, finish_stage, read_stage, stage_state,
)


@dataclass(frozen=True)
class Cfg:
    lr: float = 1e-3
    name: str = "x"


def test_digest_follows_config_and_inputs():
    a = config_digest(Cfg(), ["data/"])
    assert a == config_digest(Cfg(), ["data/"]) and len(a) == 16
    assert a != config_digest(Cfg(lr=2e-3), ["data/"]) and a != config_digest(Cfg(), ["other/"])


def test_states_absent_partial_finished_stale(tmp_path):
    out, d = tmp_path / "run", config_digest(Cfg())
    assert stage_state(out, "sft", d) == "absent"
    claim_output(out, "sft")
    assert stage_state(out, "sft", d) == "absent"  # created empty
    begin_stage(out, "sft", d)
    assert stage_state(out, "sft", d) == "partial"
    finish_stage(out, "sft", d, {"steps": 3})
    assert stage_state(out, "sft", d) == "finished" and read_stage(out).result == {"steps": 3}
    assert stage_state(out, "sft", config_digest(Cfg(lr=5.0))) == "stale"
    assert stage_state(out, "ppo", d) == "stale"
    (out / STAGE_FILE).write_text("{not json")
    assert stage_state(out, "sft", d) == "partial"


def test_a_used_folder_is_refused_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "weights.bin").write_text("precious")
    with pytest.raises(OutputExistsError, match="--resume to continue it or --overwrite"):
        claim_output(out, "sft")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        claim_output(out, "prepare", resumable=False)
    # overwrite never deletes a folder that is not recognizably a stage output
    with pytest.raises(OutputExistsError, match="does not look like a sft output"):
        claim_output(out, "sft", overwrite=True)
    assert (out / "weights.bin").exists()
    assert claim_output(out, "sft", resume=True) == out and (out / "weights.bin").exists()
    with pytest.raises(OutputExistsError, match="cannot resume"):
        claim_output(out, "prepare", resume=True, resumable=False)
    # dry run: checks, changes nothing
    claim_output(out, "sft", overwrite=True, recognizes=lambda p: True, dry_run=True)
    assert (out / "weights.bin").exists()
    claim_output(out, "sft", overwrite=True, recognizes=lambda p: (p / "weights.bin").exists())
    assert out.is_dir() and not any(out.iterdir())
    begin_stage(out, "sft", "abc")
    claim_output(out, "sft", overwrite=True)  # our own record makes it recognizable
    assert not any(out.iterdir())
