"""`karma sft` refuses bad input with exit code 2 before Ray starts."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from karma_ray.sft.cli import sft_main


@pytest.fixture
def prepared(tmp_path):
    d = tmp_path / "prepared"
    (d / "examples" / "split=train").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"inputs": []}))
    pq.write_table(pa.table({"id": ["a", "b", "c"], "score": [1, 5, 9], "sibling_percentile": [0.1, 0.5, 0.9],
                             "context": ["x"] * 3, "reply": ["y"] * 3}), d / "examples" / "split=train" / "part.parquet")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return d, model


def run(args, capsys):
    code = sft_main(args)
    return code, capsys.readouterr().err


def test_bad_input_exits_2_with_a_message_and_no_ray(prepared, tmp_path, capsys, ray_start_calls):
    data, model = prepared
    base = ["--data", str(data), f"model.path={model}", "data.val_split=null", "scaling.num_workers=1"]
    cases = {
        "unknown config key 'train.max_step'": [*base, "--output", str(tmp_path / "o1"), "train.max_step=3"],
        "no manifest": ["--data", str(tmp_path), "--output", str(tmp_path / "o2"), f"model.path={model}"],
        "examples/split=val": [*base[:3], "--output", str(tmp_path / "o3"), "scaling.num_workers=1"],
        "no config.json": [*base, "--output", str(tmp_path / "o4"), f"model.path={tmp_path}"],
        "no training example passes": [*base, "--output", str(tmp_path / "o5"), "data.min_score=100"],
        "too few for one optimizer step": [*base, "--output", str(tmp_path / "o6"), "train.grad_accum=2"],
        "no run to resume": [*base, "--output", str(tmp_path / "o7"), "--resume"],
        "already holds files": [*base, "--output", str(data)],
    }
    for message, args in cases.items():
        code, err = run(args, capsys)
        assert code == 2 and message in err, (message, err)
    assert ray_start_calls == []


def test_help_config_lists_every_section(capsys):
    assert sft_main(["--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("model.path", "data.min_score", "train.max_failures", "deepspeed.zero_stage", "ray.address"):
        assert key in out
