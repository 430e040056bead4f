"""Pure tensor math for PPO-style RLHF: log-probs, KL, reward shaping, advantages, losses.

Only ``torch`` and the standard library are imported here, so this package is importable (and
testable) without Ray, vLLM or transformers.  All functions are tensor-in / tensor-out, never
mutate their inputs, and take ``(B, T)`` response masks (1 on response tokens).
"""

from .advantages import (
    discounted_returns,
    gae,
    grpo_advantages,
    reinforce_plus_plus_advantages,
    rloo_advantages,
    whiten_advantages,
)
from .kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, KLEstimator, kl_estimate
from .logprobs import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_fill_zero,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from .losses import (
    LOSS_AGGS,
    LossAgg,
    PolicyLossStats,
    aggregate_loss,
    entropy_bonus,
    kl_loss,
    ppo_policy_loss,
    value_loss,
)
from .rewards import (
    RunningMoments,
    clip_scores,
    eos_penalty,
    last_token_index,
    length_penalty,
    normalize_scores,
    shape_token_rewards,
)

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "KLEstimator",
    "KL_ESTIMATORS",
    "LOSS_AGGS",
    "LossAgg",
    "PolicyLossStats",
    "RunningMoments",
    "aggregate_loss",
    "clip_scores",
    "discounted_returns",
    "entropy_bonus",
    "entropy_from_logits",
    "eos_penalty",
    "gae",
    "grpo_advantages",
    "kl_estimate",
    "kl_loss",
    "last_token_index",
    "length_penalty",
    "logprobs_from_logits",
    "masked_fill_zero",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "normalize_scores",
    "ppo_policy_loss",
    "reinforce_plus_plus_advantages",
    "rloo_advantages",
    "shape_token_rewards",
    "value_loss",
]
