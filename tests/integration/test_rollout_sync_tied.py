"""Weight sync into vLLM for a model with tied embeddings (lm_head IS embed_tokens: SmolLM2, Gemma).

Its own module: test_rollout_sync.py's module-scoped engines hold both CPUs of the test cluster while
that module runs, so this test's engine could not be placed there.
"""

import pytest

from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer
from karma_ray.engines.config import RolloutConfig
from karma_ray.engines.weight_sync import checkpoint_tensor_index, sync_weights
from karma_ray.engines.rollout import VLLMRollout
from karma_ray.types import SamplingSettings
from tests.weight_source import CheckpointWeightSource

pytestmark = pytest.mark.ray

SENTENCES = ["the quick brown fox jumps over the lazy dog", "upvotes go to the funniest reply in the thread"]
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
SYNC_TIMEOUT_S = 120.0


def test_tied_embeddings_sync_reaches_vllm_output_layer(ray_cluster, tmp_path):
    """A tied model's checkpoint stores only embed_tokens; vLLM's in-place reload never reprocessed
    the tied lm_head, which kept sampling from the first weights (SmolLM2's logprob gap grew with
    every PPO update). Only the shared embedding is changed here, so a stale head shows at once."""
    ray = ray_cluster
    tok = train_bpe_tokenizer(SENTENCES * 10, vocab_size=300)
    model_dir = str(save_tiny_llama(tmp_path / "tied", tok, hidden_size=64, num_layers=2, num_heads=2, tie_word_embeddings=True))
    assert "lm_head.weight" not in checkpoint_tensor_index(model_dir)
    cfg = RolloutConfig(engine="vllm", max_model_len=128, kv_cache_gib=0.25, cpus_per_engine=1)
    vllm = ray.remote(num_cpus=1)(VLLMRollout).remote(model_dir, cfg, seed=0)
    source = ray.remote(num_cpus=0.5)(CheckpointWeightSource).remote(model_dir)
    try:
        s = SamplingSettings(max_new_tokens=16, n=2, seed=5)
        diffs = []
        for step in range(3):
            assert ray.get(source.perturb.remote(0.5, seed=step, names=["model.embed_tokens.weight"])) > 0.3
            report = sync_weights(source, [vllm], bucket_mib=1, timeout_s=SYNC_TIMEOUT_S)
            assert report.engines[0].ignored == 1  # lm_head.weight: the same tensor, sent once as embed_tokens
            gens = ray.get(vllm.generate.remote(PROMPTS, s))
            policy = ray.get(source.response_logprobs.remote(gens.prompt_ids, gens.response_ids))
            diffs.append(max(abs(a - b) for ra, rb in zip(gens.sampling_logprobs, policy) for a, b in zip(ra, rb)))
        print(f"\ntied model, vLLM vs policy after each sync: {['%.1e' % d for d in diffs]}")
        assert max(diffs) < 1e-4
    finally:
        ray.get(vllm.close.remote())
        ray.kill(vllm)
        ray.kill(source)
