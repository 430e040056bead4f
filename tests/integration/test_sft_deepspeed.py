"""`karma sft` with DeepSpeed ZeRO-2 on CPU (DS_ACCELERATOR=cpu, gloo, torch AdamW): 2 Ray Train workers
train, checkpoint (each rank's optimizer shard merged by Ray Train), resume, and export a plain HF folder.
Slow: DeepSpeed JIT-builds a shared-memory op on first use (~30 s, STACK.md)."""

import json
import os
from pathlib import Path

import pytest

from karma_ray.config import load_config
from karma_ray.sft.config import SFTConfig
from karma_ray.sft.train import run_sft

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_zero2_trains_checkpoints_resumes_and_exports(prepared_synthetic, tmp_path):
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    from karma_ray.models.tiny import gpt2_tokenizer, save_tiny_llama
    shared = Path(os.environ.get("KARMA_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    if not (shared / "tokenizers" / "gpt2").is_dir():
        pytest.skip(f"GPT-2 tokenizer not found under {shared}")
    tok = gpt2_tokenizer(shared / "tokenizers" / "gpt2")
    base = save_tiny_llama(tmp_path / "base", tok, hidden_size=32, num_layers=1, num_heads=2)
    overrides = [
        f"model.path={base}", "deepspeed.zero_stage=2", "data.max_prompt_tokens=64", "data.max_reply_tokens=32",
        "data.eval_examples=32", "optim.lr=0.003", "optim.schedule=constant", "train.batch_size=8",
        "train.grad_accum=2", "train.log_every_steps=3", "train.checkpoint_every_steps=3",
        "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
    ]
    out = tmp_path / "run"
    first = run_sft(load_config(SFTConfig, None, [*overrides, "train.max_steps=6"]), out, data=prepared_synthetic)
    assert first.steps == 6 and first.val_loss_after < first.val_loss_before - 0.5
    resumed = run_sft(load_config(SFTConfig, None, [*overrides, "train.max_steps=9"]), out, data=prepared_synthetic, resume=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert resumed.steps == 9 and metrics["restarts"] == 1
    assert [p["step"] for p in metrics["train_curve"]] == [3, 6, 9]
    model = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
    assert model.config.vocab_size == 50257
