"""PPO-family losses: clipped policy surrogate, clipped value loss, KL-in-loss, entropy bonus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import torch

from .kl import KLEstimator, kl_estimate
from .logprobs import masked_fill_zero, masked_mean, masked_sum

LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]
LOSS_AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")

# |log pi_new - log pi_old| is clamped to this before exponentiating, so a wildly off-policy token
# gives a large finite ratio instead of inf/nan (its gradient is then 0: the clip is active anyway).
_MAX_LOG_RATIO = 20.0


def aggregate_loss(loss_mat: torch.Tensor, mask: torch.Tensor, loss_agg: LossAgg = "token-mean") -> torch.Tensor:
    """Reduce a per-token loss matrix to a scalar.

    * ``"token-mean"``: mean over all response tokens of the batch (long answers weigh more).
    * ``"seq-mean-token-sum"``: sum over each sequence's tokens, then mean over sequences.
    * ``"seq-mean-token-mean"``: mean over each sequence's tokens, then mean over sequences
      (the original GRPO normalisation; every sequence weighs the same).

    Sequence means run over the rows that have at least one response token.

    Args:
        loss_mat: ``(B, T)`` per-token losses.
        mask: ``(B, T)`` response mask.
        loss_agg: one of the modes above.

    Returns:
        Scalar tensor (0 when the mask is empty).
    """
    if loss_agg == "token-mean":
        return masked_mean(loss_mat, mask)
    if loss_agg == "seq-mean-token-sum":
        per_seq = masked_sum(loss_mat, mask, dim=-1)
    elif loss_agg == "seq-mean-token-mean":
        per_seq = masked_mean(loss_mat, mask, dim=-1)
    else:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGS}")
    has_tokens = (mask != 0).any(dim=-1)
    return masked_mean(per_seq, has_tokens)


@dataclass(frozen=True)
class PolicyLossStats:
    """Diagnostics of :func:`ppo_policy_loss`; all fields are detached 0-dim tensors (no host sync).

    Attributes:
        clip_frac: fraction of response tokens where the ratio clip is active, i.e. the clipped
            surrogate was selected because it is the more pessimistic one (those tokens get no
            gradient).
        dual_clip_frac: fraction of response tokens where the dual clip (negative advantages,
            ``ratio > dual_clip``) bounded the loss (0 when dual clip is off).
        approx_kl: mean over response tokens of ``old_logprobs - logprobs``, the k1 estimate of
            ``KL(pi_old || pi_new)`` from tokens sampled by ``pi_old``.  It is 0 on the first
            minibatch step and grows as the policy moves away from the rollout policy.
        ratio_mean: mean over response tokens of ``pi_new / pi_old``.
    """

    clip_frac: torch.Tensor
    dual_clip_frac: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    loss_agg: LossAgg = "token-mean",
) -> Tuple[torch.Tensor, PolicyLossStats]:
    """PPO clipped surrogate loss (Schulman et al. 2017), with optional asymmetric clip (DAPO's
    "clip-higher") and dual clip (Ye et al. 2020).

    Per token, with ``ratio = exp(logprobs - old_logprobs)``::

        loss_t = max(-A * ratio, -A * clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high))
        if dual_clip is set and A < 0:  loss_t = min(loss_t, -A * dual_clip)

    then aggregated with :func:`aggregate_loss`.

    Args:
        logprobs: ``(B, T)`` log-probabilities under the current policy (carry the gradient).
        old_logprobs: ``(B, T)`` log-probabilities under the rollout policy (no gradient needed).
        advantages: ``(B, T)``.
        mask: ``(B, T)`` response mask.
        clip_eps_low: lower clip, ratio >= ``1 - clip_eps_low``.
        clip_eps_high: upper clip, ratio <= ``1 + clip_eps_high``; defaults to ``clip_eps_low``.
        dual_clip: constant ``c > 1`` bounding the loss of negative-advantage tokens by ``-A * c``;
            ``None`` disables it.
        loss_agg: aggregation mode (see :func:`aggregate_loss`).

    Returns:
        ``(loss, stats)``: scalar loss to minimise, and a :class:`PolicyLossStats`.
    """
    for name, t in (("old_logprobs", old_logprobs), ("advantages", advantages), ("mask", mask)):
        if t.shape != logprobs.shape:
            raise ValueError(f"{name} {tuple(t.shape)} must match logprobs {tuple(logprobs.shape)}")
    if clip_eps_high is None:
        clip_eps_high = clip_eps_low
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")

    # Sanitise padding first: junk there must neither change the loss nor produce nan gradients.
    logprobs = masked_fill_zero(logprobs, mask)
    old_logprobs = masked_fill_zero(old_logprobs, mask)
    advantages = masked_fill_zero(advantages, mask)

    log_ratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss_mat = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(loss_mat, dtype=torch.bool)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual_active = (advantages < 0) & (loss_mat > bound)
        loss_mat = torch.where(dual_active, bound, loss_mat)

    loss = aggregate_loss(loss_mat, mask, loss_agg)
    with torch.no_grad():
        stats = PolicyLossStats(
            clip_frac=masked_mean((clipped > unclipped).to(loss_mat.dtype), mask),
            dual_clip_frac=masked_mean(dual_active.to(loss_mat.dtype), mask),
            approx_kl=masked_mean(-log_ratio, mask),
            ratio_mean=masked_mean(ratio, mask),
        )
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: Optional[float] = 0.2,
    loss_agg: LossAgg = "token-mean",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped value loss.

    ``v_clip = old_values + clamp(values - old_values, -clip_range, clip_range)`` and per token
    ``0.5 * max((values - returns)^2, (v_clip - returns)^2)``, aggregated with
    :func:`aggregate_loss`.  With ``clip_range=None`` it is plain ``0.5 * MSE``.

    Args:
        values: ``(B, T)`` current critic predictions (carry the gradient).
        old_values: ``(B, T)`` critic predictions at rollout time.
        returns: ``(B, T)`` regression targets (e.g. from :func:`gae`).
        mask: ``(B, T)`` response mask.
        clip_range: maximum move of the prediction away from ``old_values``, or ``None``.
        loss_agg: aggregation mode.

    Returns:
        ``(loss, clip_frac)``: scalar loss; detached scalar fraction of response tokens where the
        clipped error was strictly larger (so the clipped branch was used and gave no gradient).
    """
    for name, t in (("old_values", old_values), ("returns", returns), ("mask", mask)):
        if t.shape != values.shape:
            raise ValueError(f"{name} {tuple(t.shape)} must match values {tuple(values.shape)}")
    values = masked_fill_zero(values, mask)
    old_values = masked_fill_zero(old_values, mask)
    returns = masked_fill_zero(returns, mask)
    err = (values - returns).square()
    if clip_range is None:
        loss_mat = err
        clip_frac = torch.zeros((), dtype=err.dtype, device=err.device)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip_range, clip_range)
        err_clip = (v_clip - returns).square()
        loss_mat = torch.maximum(err, err_clip)
        clip_frac = masked_mean((err_clip > err).to(err.dtype), mask).detach()
    return 0.5 * aggregate_loss(loss_mat, mask, loss_agg), clip_frac


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: KLEstimator = "k3",
    loss_agg: LossAgg = "token-mean",
) -> torch.Tensor:
    """KL-to-reference penalty used as a loss term (GRPO style) instead of a reward penalty.

    Args:
        logprobs: ``(B, T)`` current policy log-probabilities (carry the gradient).
        ref_logprobs: ``(B, T)`` reference-model log-probabilities.
        mask: ``(B, T)`` response mask.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (default, non-negative and unbiased).
        loss_agg: aggregation mode.

    Returns:
        Scalar; multiply by the KL coefficient and add to the policy loss.  The log-ratio is
        clamped to ``[-20, 20]`` so ``k3`` stays finite for badly diverged tokens.
    """
    kl = kl_estimate(logprobs, ref_logprobs, estimator, mask=mask, log_ratio_clamp=_MAX_LOG_RATIO)
    return aggregate_loss(kl, mask, loss_agg)


def entropy_bonus(
    entropy: torch.Tensor, mask: torch.Tensor, coef: float = 1.0, loss_agg: LossAgg = "token-mean"
) -> torch.Tensor:
    """Entropy bonus as a loss term: ``-coef * aggregate(entropy)``.

    Adding it to the loss and minimising *raises* the policy entropy.

    Args:
        entropy: ``(B, T)`` per-token entropies (see ``entropy_from_logits``).
        mask: ``(B, T)`` response mask.
        coef: bonus weight (>= 0).
        loss_agg: aggregation mode.

    Returns:
        Scalar (<= 0 for ``coef >= 0``).
    """
    return -coef * aggregate_loss(entropy, mask, loss_agg)
