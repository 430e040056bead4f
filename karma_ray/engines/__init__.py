"""Engines shared by PPO and evaluation: the rollout engines (vLLM, HF `generate`) behind one
interface, the weight sync that keeps them on the policy's latest weights, and the frozen-LM
log-prob scorer.

    config       RolloutConfig (greedy decoding allowed; PPO requires sampling)
    rollout      VLLMRollout, HFRollout: token ids in, Generations out
    weight_sync  policy -> engine weight buckets, staged checkpoints, SyncReport
    scorer       LogprobScorer: logprobs of given tokens under a frozen model
    forward      device/dtype, dropout off, the causal-LM forward of a SequenceBatch

The classes are plain; callers apply `ray.remote` with their resources. Importing this package
imports neither vLLM nor transformers.
"""
