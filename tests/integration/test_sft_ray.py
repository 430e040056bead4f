"""`karma sft` on a 2-worker Ray Train run over a prepared synthetic corpus: the validation loss falls,
the exported folder loads with plain transformers, the lineage names the corpus (so the base model passes
the no-exposure check and the fine-tuned one fails it), and --resume continues the step count and ends
where an uninterrupted run ends."""

import json

import pyarrow.dataset as pads
import pytest

from karma_ray.config import load_config
from karma_ray import lineage
from karma_ray.sft.cli import sft_main
from karma_ray.sft.config import SFTConfig
from karma_ray.sft.train import run_sft

pytestmark = pytest.mark.ray

OVERRIDES = [
    "data.max_prompt_tokens=96", "data.max_reply_tokens=48", "data.eval_examples=64",
    "optim.lr=0.003", "optim.warmup_steps=2", "optim.schedule=constant",
    "train.batch_size=16", "train.log_every_steps=4", "train.checkpoint_every_steps=10",
    "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",  # 1 of the 2 CPUs stays free for Ray Data
]


@pytest.fixture(scope="module")
def tiny_base(prepared_synthetic, tmp_path_factory):
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer

    rows = pads.dataset(str(prepared_synthetic / "examples" / "split=train"), format="parquet").to_table(columns=["context", "reply"])
    texts = rows["reply"].to_pylist()[:2000] + rows["context"].to_pylist()[:500]
    tok = train_bpe_tokenizer(texts, vocab_size=512)
    return save_tiny_llama(tmp_path_factory.mktemp("base") / "tiny_llama", tok, hidden_size=48, num_layers=2, num_heads=4)


@pytest.fixture(scope="module")
def sft_run(prepared_synthetic, tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    cfg = load_config(SFTConfig, None, [f"model.path={tiny_base}", "train.max_steps=24", *OVERRIDES])
    result = run_sft(cfg, out, data=prepared_synthetic)
    metrics = json.loads((out / "metrics.json").read_text())
    return result, metrics


def test_validation_loss_falls_and_the_curve_is_recorded(sft_run):
    result, metrics = sft_run
    assert result.steps == metrics["steps"] == 24
    before, after = metrics["val_before"], metrics["val_after"]
    assert before["examples"] == after["examples"] == 64 and before["tokens"] == after["tokens"]  # same examples
    assert after["loss"] < before["loss"] - 1.0  # a random 512-token model starts near ln(512) = 6.2
    curve = metrics["train_curve"]
    assert [p["step"] for p in curve] == [4, 8, 10, 12, 16, 20, 24]  # log every 4, checkpoint at 10
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert all(p["tokens_per_s"] > 0 for p in curve)
    # 24 steps x 2 workers x 16 sequences
    assert metrics["examples_seen"] == 24 * 2 * 16


def test_exported_model_loads_with_plain_transformers(sft_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _ = sft_run
    assert (result.model_dir / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    model = AutoModelForCausalLM.from_pretrained(result.model_dir, use_safetensors=True)
    ids = tok("[title] hello\n[user]", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    assert torch.isfinite(model(ids).logits).all()


def test_lineage_names_the_corpus_and_separates_exposed_from_unexposed(sft_run, prepared_synthetic, tiny_base):
    result, _ = sft_run
    manifest = prepared_synthetic / "manifest.json"
    sha = lineage.file_sha256(manifest)
    stage = lineage.read_lineage(result.model_dir)["stages"][-1]
    assert stage["stage"] == "sft" and stage["manifest_sha256"] == sha and stage["splits"] == ["train"]
    train_ids = pads.dataset(str(prepared_synthetic / "examples" / "split=train"), format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert stage["num_examples"] == json.loads(manifest.read_text())["splits"]["train"] == len(train_ids)
    assert stage["example_ids_sha256"] == lineage.example_ids_digest(train_ids)
    assert lineage.read_lineage(result.output) == lineage.read_lineage(result.model_dir)
    assert lineage.corpora_seen(result.model_dir) == [sha]
    assert lineage.corpora_seen(tiny_base) == []
    lineage.assert_no_exposure(tiny_base, prepared_synthetic)  # the random-init base saw nothing
    with pytest.raises(lineage.ExposureError, match="trained on the corpus"):
        lineage.assert_no_exposure(result.model_dir, manifest)


def test_resume_continues_the_step_count(prepared_synthetic, tiny_base, tmp_path):
    """Its own run (12 steps, then `karma sft --resume` to 16), so it holds in any test order and
    leaves the module's run alone."""
    out = tmp_path / "run"
    first = run_sft(load_config(SFTConfig, None, [f"model.path={tiny_base}", "train.max_steps=12", *OVERRIDES]), out,
                    data=prepared_synthetic)
    before = json.loads((out / "metrics.json").read_text())
    assert first.steps == 12 and [p["step"] for p in before["train_curve"]] == [4, 8, 10, 12]
    args = ["--data", str(prepared_synthetic), "--output", str(out), "--resume",
            f"model.path={tiny_base}", "train.max_steps=16", *OVERRIDES]
    assert sft_main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 16 and metrics["restarts"] == 1
    assert [p["step"] for p in metrics["train_curve"]] == [4, 8, 10, 12, 16]
    assert metrics["val_before"] == before["val_before"]  # kept from the original start
    assert metrics["examples_seen"] == 16 * 2 * 16
    # Fixed shards (training/loop.py): every rank reads the same rows in the same order on every run,
    # so the resumed run skips exactly what it had trained on and ends where one 16-step run ends
    # (the schedule is constant, so the first run's shorter total does not change its learning rates).
    whole = run_sft(load_config(SFTConfig, None, [f"model.path={tiny_base}", "train.max_steps=16", *OVERRIDES]), tmp_path / "whole",
                    data=prepared_synthetic)
    assert metrics["val_after"]["loss"] == pytest.approx(whole.val_loss_after, rel=1e-6)
    whole_curve = json.loads((tmp_path / "whole" / "metrics.json").read_text())["train_curve"]
    assert [p["loss"] for p in metrics["train_curve"]] == pytest.approx([p["loss"] for p in whole_curve], rel=1e-6)
