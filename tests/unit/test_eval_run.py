"""`karma eval` refuses bad input before any Ray work: each error names the thing at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from karma_ray.config import ConfigError, load_config
from karma_ray.eval.config import EvalConfig
from karma_ray.eval.run import EvalInputError, check_inputs, parse_models

REPO = Path(__file__).resolve().parents[2]
EVAL_DATA = REPO.parent / "shared" / "data" / "eval"


@pytest.fixture
def model_dir(tmp_path):
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer

    tok = train_bpe_tokenizer(["a b c d e f g"] * 10, vocab_size=280)
    return save_tiny_llama(tmp_path / "m", tok, hidden_size=16, num_layers=1, num_heads=2)


def cfg(*overrides):
    return load_config(EvalConfig, None, [f"tasks.data_root={EVAL_DATA}", *overrides])


def test_model_names_come_from_the_argument_and_must_differ():
    refs = parse_models(["base=packaged:smollm2-135m-instruct", "runs/sft/model", "runs/ppo/policy/"])
    assert [r.name for r in refs] == ["base", "model", "policy"]
    with pytest.raises(EvalInputError, match="named alike"):
        parse_models(["a/model", "b/model"])


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="tasks.limits: 'nope' is not in tasks.names"):
        cfg("tasks.limits=[nope=3]")
    with pytest.raises(ConfigError, match="karma task needs karma.corpus"):
        cfg("tasks.names=[karma]")
    assert cfg("tasks.limits=[mmlu=7]").tasks.limit_of("mmlu") == 7


@pytest.mark.skipif(not EVAL_DATA.exists(), reason=f"shared data not found: {EVAL_DATA}")
def test_bad_inputs_fail_before_ray_with_the_name_of_the_culprit(model_dir, tmp_path, monkeypatch):
    import karma_ray.ray_utils
    from karma_ray.eval.run import run_eval

    def no_ray(*_, **__):
        raise AssertionError("Ray was started before the inputs were checked")

    monkeypatch.setattr(karma_ray.ray_utils, "init_ray", no_ray)
    out = tmp_path / "out"
    with pytest.raises(EvalInputError, match="no config.json"):  # through the stage itself
        run_eval(cfg("tasks.names=[humor]"), out, models=[str(tmp_path)])
    with pytest.raises(Exception, match="unknown task 'humour'"):
        check_inputs(cfg("tasks.names=[humour]"), out, [str(model_dir)], False)
    with pytest.raises(EvalInputError, match="no config.json"):
        check_inputs(cfg("tasks.names=[humor]"), out, [str(tmp_path)], False)
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text("{}")
    (weightless / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(EvalInputError, match="no .safetensors"):
        check_inputs(cfg("tasks.names=[humor]"), out, [str(weightless)], False)
    with pytest.raises(EvalInputError, match="humor_colbert"):
        check_inputs(cfg("tasks.names=[humor]", f"tasks.data_root={tmp_path}"), out, [str(model_dir)], False)
    (out / "something").parent.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(Exception, match="already holds"):
        check_inputs(cfg("tasks.names=[humor]"), out, [str(model_dir)], False)


@pytest.mark.skipif(not EVAL_DATA.exists(), reason=f"shared data not found: {EVAL_DATA}")
def test_subsets_are_seeded_the_same_for_every_model_and_counts_add_up(model_dir, tmp_path):
    c = cfg("tasks.names=[humor,mmlu,implicature_5shot]", "tasks.limit=30", "tasks.limits=[mmlu=12]")
    _, data = check_inputs(c, tmp_path / "o", [str(model_dir)], False)
    _, again = check_inputs(c, tmp_path / "o", [str(model_dir)], False)
    assert [[d["id"] for d in t.docs] for t in data] == [[d["id"] for d in t.docs] for t in again]
    assert [len(t.docs) for t in data] == [30, 12, 30]
    assert data[0].n_rows == 40_000 and data[2].fewshot and len(data[2].fewshot) == 118
    _, other_seed = check_inputs(load_config(EvalConfig, None, [f"tasks.data_root={EVAL_DATA}", "seed=1",
                                                                "tasks.names=[humor]", "tasks.limit=30"]), tmp_path / "o", [str(model_dir)], False)
    assert [d["id"] for d in other_seed[0].docs] != [d["id"] for d in data[0].docs]
