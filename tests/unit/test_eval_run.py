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


def test_weights_digest_sees_tensors_config_and_tokenizer_not_lineage(model_dir, tmp_path):
    """A copy with other lineage and key order is the same model; one changed weight, a changed config
    value or tokenizer is not (these decide whether an evaluation may score a model once for two)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from karma_ray.eval.run import ModelRef, identical_models
    from karma_ray.models.hf import weights_digest

    copy = Path(shutil.copytree(model_dir, tmp_path / "copy"))
    (copy / "lineage.json").write_text('{"stages": ["sft"]}')
    state = load_file(str(copy / "model.safetensors"))
    save_file(dict(reversed(list(state.items()))), str(copy / "model.safetensors"))  # another key order in the file
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "_name_or_path": "elsewhere"}))
    assert weights_digest(copy) == weights_digest(model_dir) is not None

    moved = Path(shutil.copytree(model_dir, tmp_path / "moved"))
    name = sorted(state)[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] += 1e-6  # the smallest change a policy update could make
    save_file(state, str(moved / "model.safetensors"))
    assert weights_digest(moved) != weights_digest(model_dir)

    other_config = Path(shutil.copytree(model_dir, tmp_path / "other_config"))
    (other_config / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-3}))
    assert weights_digest(other_config) != weights_digest(model_dir)
    other_tok = Path(shutil.copytree(model_dir, tmp_path / "other_tok"))
    (other_tok / "tokenizer.json").write_text((other_tok / "tokenizer.json").read_text().replace('"a"', '"z"', 1))
    assert weights_digest(other_tok) != weights_digest(model_dir)
    assert weights_digest("HuggingFaceTB/SmolLM2-135M") is None  # a hub id: nothing to read, never a twin

    refs = [ModelRef("base", str(model_dir)), ModelRef("moved", str(moved)), ModelRef("copy", str(copy)),
            ModelRef("hub", "HuggingFaceTB/SmolLM2-135M"), ModelRef("copy2", str(copy))]
    assert identical_models(refs) == {"copy": "base", "copy2": "base"}
