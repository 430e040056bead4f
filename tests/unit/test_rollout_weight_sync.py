"""karma_ray.engines.weight_sync without Ray or vLLM: bucket boundaries by hand, update validation,
the staged checkpoint a vLLM engine reloads from (partial updates carried over), CPU thread binding."""

import os
import tempfile
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from karma_ray.engines.weight_sync import (
    WeightSyncError,
    check_update,
    checkpoint_tensor_index,
    iter_buckets,
    make_staging_dir,
    merge_buckets,
    stage_checkpoint,
)
from karma_ray.engines.rollout import check_cpu_head_dim, check_prompts, cpu_thread_binding
from karma_ray.types import SamplingSettings


def f32(n):  # a float32 tensor of n elements = 4n bytes
    return torch.zeros(n, dtype=torch.float32)


def layout(buckets):
    return [list(b) for b in buckets]


def test_buckets_fill_up_to_the_limit_and_no_further():
    # sizes 40, 40, 20 | 60 | 100 (exactly the limit) | 4: a bucket closes when the next tensor would pass 100 bytes
    named = [("a", f32(10)), ("b", f32(10)), ("c", f32(5)), ("d", f32(15)), ("e", f32(25)), ("f", f32(1))]
    assert layout(iter_buckets(named, 100)) == [["a", "b", "c"], ["d"], ["e"], ["f"]]


def test_a_tensor_larger_than_a_bucket_gets_its_own_bucket():
    # 8 | 400 (over the 100-byte limit: alone, not split) | 8 + 8
    named = [("small", f32(2)), ("huge", f32(100)), ("x", f32(2)), ("y", f32(2))]
    buckets = list(iter_buckets(named, 100))
    assert layout(buckets) == [["small"], ["huge"], ["x", "y"]]
    assert buckets[1]["huge"].numel() == 100  # whole, never split


def test_bucket_bytes_follow_the_dtype_and_order_is_kept():
    # bf16: 50 elements = 100 bytes fills one bucket exactly; float64: 13 elements = 104 bytes is too big
    named = [("h", torch.zeros(50, dtype=torch.bfloat16)), ("d", torch.zeros(13, dtype=torch.float64)), ("i", torch.zeros(1, dtype=torch.int64))]
    assert layout(iter_buckets(named, 100)) == [["h"], ["d"], ["i"]]
    assert layout(iter_buckets(named, 1000)) == [["h", "d", "i"]]
    assert list(iter_buckets([], 100)) == []


def test_bucket_errors():
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_buckets([("a", f32(1))], 0))
    with pytest.raises(ValueError, match="twice"):
        list(iter_buckets([("a", f32(1)), ("a", f32(1))], 100))


EXPECTED = {"w": (2, 3), "b": (3,), "emb": (4, 2)}


def test_merge_and_check_an_update():
    merged = merge_buckets([{"w": torch.ones(2, 3)}, {"b": torch.ones(3)}])
    kept, ignored = check_update(merged, EXPECTED)
    assert sorted(kept) == ["b", "w"] and ignored == []  # a subset: a partial update is valid
    kept, ignored = check_update({**merged, "lm_head.weight": torch.ones(1)}, EXPECTED, ignorable={"lm_head.weight"})
    assert sorted(kept) == ["b", "w"] and ignored == ["lm_head.weight"]


def test_update_errors_name_the_culprits():
    with pytest.raises(WeightSyncError, match="arrived twice"):
        merge_buckets([{"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3)}])
    with pytest.raises(WeightSyncError, match="expected a dict"):
        merge_buckets([[("w", torch.ones(2, 3))]])
    with pytest.raises(WeightSyncError, match=r"unknown to the rollout engine.*module\.w"):
        check_update({"module.w": torch.ones(2, 3)}, EXPECTED)  # e.g. a wrapper's prefix
    with pytest.raises(WeightSyncError, match=r"wrong shape.*got \(3, 2\), engine has \(2, 3\)"):
        check_update({"w": torch.ones(3, 2)}, EXPECTED)


def read(path, name):
    with safe_open(path, framework="pt") as f:
        return f.get_tensor(name)


def test_staged_checkpoint_is_complete_after_a_partial_update(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    first = stage_checkpoint({"w": torch.full((2, 3), 1.0), "b": torch.full((3,), 2.0)}, tmp_path / "v1", src)
    assert first["carried"] == 0 and first["bytes"] == (6 + 3) * 4
    assert (tmp_path / "v1" / "config.json").exists()  # side files travel with the weights
    # v2 updates only "w": "b" is carried over from v1, so v2 alone is a full checkpoint
    second = stage_checkpoint({"w": torch.full((2, 3), 5.0)}, tmp_path / "v2", src, previous=first["index"])
    assert second["carried"] == 1
    index = checkpoint_tensor_index(tmp_path / "v2")
    assert {n: s for n, (_, s) in index.items()} == {"w": (2, 3), "b": (3,)}
    assert torch.equal(read(index["w"][0], "w"), torch.full((2, 3), 5.0))
    assert torch.equal(read(index["b"][0], "b"), torch.full((3,), 2.0))


def test_staging_casts_and_handles_tied_storage(tmp_path):
    emb = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    # tied embeddings: lm_head shares emb's storage, which safetensors refuses unless copied
    staged = stage_checkpoint({"emb": emb, "lm_head": emb}, tmp_path / "v", tmp_path, dtype=torch.bfloat16, shard_bytes=12)
    assert staged["bytes"] == 2 * 6 * 2  # bf16
    assert len(staged["files"]) == 2  # 12 + 12 bytes over a 12-byte shard limit: one tensor per file
    for name in ("emb", "lm_head"):
        t = read(staged["index"][name][0], name)
        assert t.dtype == torch.bfloat16 and torch.equal(t.float(), emb)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="safetensors"):
        checkpoint_tensor_index(tmp_path)


def test_cpu_binding_uses_the_actors_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    env = cpu_thread_binding(4)
    assert env == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_OMP_THREADS_BIND": "0,1,2,3"}
    assert cpu_thread_binding(4, tensor_parallel_size=2)["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3"
    # fewer CPUs than visible cores (engines share the node): count threads, do not pin
    env = cpu_thread_binding(1.5)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and env["OMP_NUM_THREADS"] == "1"
    assert cpu_thread_binding(0.25)["OMP_NUM_THREADS"] == "1"


def test_prompt_checks():
    s = SamplingSettings(max_new_tokens=10)
    check_prompts([[1, 2]], s, 12)
    with pytest.raises(ValueError, match="max_model_len"):
        check_prompts([[1, 2, 3]], s, 12)
    with pytest.raises(ValueError, match="no tokens"):
        check_prompts([[1], []], s, None)
    with pytest.raises(ValueError, match="temperature"):
        check_prompts([[1]], SamplingSettings(max_new_tokens=1, temperature=-0.5), None)
    check_prompts([[1]], SamplingSettings(max_new_tokens=1, temperature=0.0), None)  # greedy (evaluation)
    with pytest.raises(ValueError, match="greedy"):
        check_prompts([[1]], SamplingSettings(max_new_tokens=1, temperature=0.0, n=2), None)


def test_staging_dirs_of_dead_processes_are_cleaned(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "karma_rollout_999999999_abc"  # no such pid
    alive = tmp_path / f"karma_rollout_{os.getppid()}_abc"
    other = tmp_path / "karma_rollout_notes"
    for d in (dead, alive, other):
        d.mkdir()
    mine = make_staging_dir()
    assert mine.parent == tmp_path and mine.name.startswith(f"karma_rollout_{os.getpid()}_")
    assert not dead.exists() and alive.exists() and other.exists()


def test_vllm_cpu_head_dim_is_checked_before_the_engine_starts():
    check_cpu_head_dim(SimpleNamespace(hidden_size=128, num_attention_heads=4))  # 32: supported
    check_cpu_head_dim(SimpleNamespace(hidden_size=64, num_attention_heads=4, head_dim=64))  # explicit head_dim wins
    with pytest.raises(ValueError, match=r"this model has 16 \(hidden 64 / 4 heads\)"):
        check_cpu_head_dim(SimpleNamespace(hidden_size=64, num_attention_heads=4))
