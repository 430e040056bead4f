"""HFRollout in-process (no Ray, no vLLM): shapes and prompt-major groups, seeds, raw sampling
logprobs equal to the policy's recomputed logprobs, and weight updates (full, partial, refused)."""

import pytest
import torch

from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer
from karma_ray.engines.config import RolloutConfig
from karma_ray.engines.weight_sync import WeightSyncError
from karma_ray.engines.rollout import HFRollout
from karma_ray.types import SamplingSettings
from tests.weight_source import CheckpointWeightSource

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "upvotes go to the funniest reply in the thread",
    "hello world, this is a tiny reddit karma model",
]
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = train_bpe_tokenizer(SENTENCES * 10, vocab_size=300)
    return str(save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", tok, hidden_size=64, num_layers=2, num_heads=4))


@pytest.fixture
def engine(model_dir):
    return HFRollout(model_dir, RolloutConfig(engine="hf"), seed=0)


@pytest.fixture
def source(model_dir):
    return CheckpointWeightSource(model_dir)


def max_abs_diff(a, b):
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def test_rows_are_prompt_major_groups(engine):
    gens = engine.generate(PROMPTS, SamplingSettings(max_new_tokens=12, n=3, seed=1))
    assert len(gens) == 9
    assert gens.group == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert gens.prompt_ids == [PROMPTS[g] for g in gens.group]
    for ids, logps, finished in zip(gens.response_ids, gens.sampling_logprobs, gens.finished):
        assert 1 <= len(ids) <= 12 and len(logps) == len(ids)
        assert all(lp <= 0 for lp in logps)
        # finished <=> the response ends with EOS (and EOS appears nowhere else); else it ran to the limit
        assert finished == (ids[-1] == engine.eos_token_id)
        assert engine.eos_token_id not in ids[:-1]
        assert finished or len(ids) == 12
    assert len({tuple(r) for r in gens.response_ids}) == 9  # samples of a group differ


def test_seeds_make_rollouts_reproducible(engine, model_dir):
    s = SamplingSettings(max_new_tokens=10, n=2, seed=7)
    first = engine.generate(PROMPTS, s)
    assert engine.generate(PROMPTS, s).response_ids == first.response_ids
    assert engine.generate(PROMPTS, SamplingSettings(max_new_tokens=10, n=2, seed=8)).response_ids != first.response_ids
    # without a per-call seed, the engine seed and its call count decide: a fresh engine replays a run
    unseeded = SamplingSettings(max_new_tokens=10)
    a, b = (HFRollout(model_dir, RolloutConfig(engine="hf"), seed=0) for _ in range(2))
    a1, a2 = a.generate(PROMPTS, unseeded), a.generate(PROMPTS, unseeded)
    b1, b2 = b.generate(PROMPTS, unseeded), b.generate(PROMPTS, unseeded)
    assert (a1.response_ids, a2.response_ids) == (b1.response_ids, b2.response_ids)
    assert a1.response_ids != a2.response_ids


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 0.9)])
def test_sampling_logprobs_are_the_policys_raw_logprobs(engine, source, temperature, top_k, top_p):
    gens = engine.generate(PROMPTS, SamplingSettings(max_new_tokens=16, n=2, temperature=temperature, top_k=top_k, top_p=top_p, seed=3))
    recomputed = source.response_logprobs(gens.prompt_ids, gens.response_ids)
    # raw (T=1, unfiltered) logprobs whatever the sampling settings: what the policy recomputes
    assert max_abs_diff(gens.sampling_logprobs, recomputed) < 1e-5


def test_weight_updates_full_partial_and_refused(engine, source):
    s = SamplingSettings(max_new_tokens=16, n=2, seed=5)
    before = engine.generate(PROMPTS, s)
    assert source.perturb(0.05, seed=1) > 0.03  # mean |noise| of N(0, 0.05^2) is 0.04
    report = engine.update_weights(*source.weight_buckets(bucket_mib=0.05))
    n_params = len(source.model.state_dict())
    assert report.tensors == n_params and not report.partial and report.buckets > 1
    assert report.bytes == sum(t.numel() * 4 for t in source.model.state_dict().values())
    # the old samples now have different logprobs (the weights moved), the new ones match the source
    assert max_abs_diff(before.sampling_logprobs, source.response_logprobs(before.prompt_ids, before.response_ids)) > 0.05
    after = engine.generate(PROMPTS, s)
    assert max_abs_diff(after.sampling_logprobs, source.response_logprobs(after.prompt_ids, after.response_ids)) < 1e-5

    # partial: only two matrices change, in the engine and in the source alike
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    source.perturb(0.3, seed=2, names=names)
    partial = source.tensors(names)
    report = engine.update_weights(partial)
    assert report.partial and report.tensors == 2 and report.carried == n_params - 2
    again = engine.generate(PROMPTS, s)
    assert max_abs_diff(again.sampling_logprobs, source.response_logprobs(again.prompt_ids, again.response_ids)) < 1e-5

    # refused updates change nothing (validation runs before any copy)
    bad = {names[0]: torch.zeros_like(partial[names[0]]), "transformer.h.0.attn.weight": torch.zeros(2)}
    with pytest.raises(WeightSyncError, match="unknown to the rollout engine"):
        engine.update_weights(bad)
    assert engine.generate(PROMPTS, s).response_ids == again.response_ids


def test_greedy_decoding_takes_the_argmax_and_keeps_raw_logprobs(engine, source):
    """temperature 0 (evaluation): each token is the argmax of the policy's next-token logits, and its
    logprob is the policy's own (not a degenerate 0 from a one-hot distribution)."""
    prompts = [[5, 6, 7], [8, 9]]
    gens = engine.generate(prompts, SamplingSettings(max_new_tokens=6, temperature=0.0))
    again = engine.generate(prompts, SamplingSettings(max_new_tokens=6, temperature=0.0, seed=123))
    assert gens.response_ids == again.response_ids  # no seed changes a greedy answer
    model = source.model
    for prompt, ids, logps in zip(gens.prompt_ids, gens.response_ids, gens.sampling_logprobs):
        seq = list(prompt)
        for tok, lp in zip(ids, logps):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
            assert tok == int(logits.argmax())
            assert abs(lp - float(torch.log_softmax(logits.double(), -1)[tok])) < 1e-4 and lp < 0
            seq.append(tok)
