"""From scored rollouts to an `Experience`: reward shaping, KL and advantages (phase 6 of the loop).

`make_advantage_fn(algo)` resolves the estimator and the KL placement ONCE at setup and returns a
function of tensors; the driver calls it every iteration without looking at modes again.

    kl placement "reward": token_rewards = -beta * KL_t (+ score on the last token)  (Ziegler et al. 2019)
    kl placement "loss":   token_rewards = score on the last token; the policy loss adds beta * KL
    kl placement "none":   token_rewards = score on the last token

    gae:          A, R = GAE(token_rewards, values)                 (needs a critic)
    reinforce++:  A = whiten(return-to-go(token_rewards))           (Hu 2025)
    grpo / rloo:  A from the group-relative SEQUENCE score; with KL in the reward the sequence
                  score is score - beta * sum_t KL_t, so both placements keep their meaning.

Torch only (plus karma_ray.algo and karma_ray.types).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from karma_ray.algo.advantages import (
    gae,
    grpo_advantages,
    reinforce_plus_plus_advantages,
    rloo_advantages,
    whiten_advantages,
)
from karma_ray.algo.logprobs import masked_sum
from karma_ray.algo.rewards import shape_token_rewards
from karma_ray.rlhf.config import AlgoConfig


@dataclass
class Advantages:
    advantages: torch.Tensor  # (B, R)
    returns: Optional[torch.Tensor]  # (B, R) critic targets (None without a critic)
    token_rewards: torch.Tensor  # (B, R) the reward each token received (KL penalty included)
    kl: torch.Tensor  # (B, R) per-token KL(policy || reference) estimate
    kl_per_sequence: torch.Tensor  # (B,) sum over the response


def make_advantage_fn(algo: AlgoConfig) -> Callable[..., Advantages]:
    """Resolve estimator + KL placement into one function:

    fn(scores (B,), logprobs (B, R), ref_logprobs (B, R), mask (B, R), values (B, R) | None,
       groups (B,) long, kl_coef float) -> Advantages
    """
    kl_in_reward = algo.kl_placement == "reward"

    def finish(adv, mask):
        return whiten_advantages(adv, mask) if algo.whiten_advantages else adv

    # estimate(scores, token_rewards, seq_kl, mask, values, groups, kl_coef) -> (advantages, returns | None)
    if algo.estimator == "gae":

        def estimate(scores, token_rewards, seq_kl, mask, values, groups, kl_coef):
            if values is None:
                raise ValueError("estimator 'gae' needs critic values")
            adv, returns = gae(token_rewards, values, mask, algo.gamma, algo.lam)
            return finish(adv, mask), returns

    elif algo.estimator == "reinforce++":

        def estimate(scores, token_rewards, seq_kl, mask, values, groups, kl_coef):
            return reinforce_plus_plus_advantages(token_rewards, mask, algo.gamma)[0], None  # already whitened

    else:
        group_fn = grpo_advantages if algo.estimator == "grpo" else rloo_advantages

        def estimate(scores, token_rewards, seq_kl, mask, values, groups, kl_coef):
            seq_scores = scores - kl_coef * seq_kl if kl_in_reward else scores
            return finish(group_fn(seq_scores, groups, mask), mask), None

    def fn(scores, logprobs, ref_logprobs, mask, values, groups, kl_coef):
        beta = kl_coef if kl_in_reward else 0.0  # the KL is in the token rewards only with kl_placement 'reward'
        token_rewards, kl = shape_token_rewards(scores, logprobs, ref_logprobs, mask, beta, algo.kl_estimator)
        seq_kl = masked_sum(kl, mask, dim=-1)
        adv, returns = estimate(scores, token_rewards, seq_kl, mask, values, groups, kl_coef)
        return Advantages(adv, returns, token_rewards, kl, seq_kl)

    return fn
