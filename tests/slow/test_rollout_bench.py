"""benchmarks/bench_rollout.measure_generation end to end on a tiny model (both engines in this
process, vLLM bound to every core it may use): the figures it returns add up."""

import os

import pytest

from benchmarks.bench_rollout import measure_generation
from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer

pytestmark = pytest.mark.slow


def test_measure_generation_reports_consistent_figures(tmp_path):
    tok = train_bpe_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300)
    model_dir = save_tiny_llama(tmp_path / "llama", tok, hidden_size=64, num_layers=2, num_heads=2)
    res = measure_generation(model_dir, batch=8, prompt_len=6, new_tokens=16, bucket_mib=1)
    assert res["cpus"] == len(os.sched_getaffinity(0))
    for name in ("hf", "vllm"):
        r = res[name]
        # every row generates 1..16 tokens; unfinished rows ran to the limit
        assert r["finished"] * 1 + (8 - r["finished"]) * 16 <= r["tokens"] <= 8 * 16
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["generate_s"], rel=0.01)
        assert r["sync_mib"] > 0
    assert res["ratio"] == pytest.approx(res["vllm"]["tokens_per_s"] / res["hf"]["tokens_per_s"], rel=0.01)
