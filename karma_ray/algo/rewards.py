"""Turning sequence-level scores into per-token PPO rewards, plus score post-processing."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .kl import KLEstimator, kl_estimate
from .logprobs import _float_mask, masked_fill_zero

Number = Union[float, torch.Tensor]


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last response token of each row.

    Args:
        mask: ``(B, T)`` response mask (right-, left- or un-padded).

    Returns:
        ``(B,)`` long tensor; ``-1`` for rows without any response token.
    """
    positions = torch.arange(mask.shape[-1], device=mask.device).expand(mask.shape)
    return torch.where(mask != 0, positions, torch.full_like(positions, -1)).max(dim=-1).values


def shape_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: KLEstimator = "k1",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards for PPO with a KL penalty folded into the reward (InstructGPT style).

    ``token_rewards[b, t] = -kl_coef * kl[b, t]`` on every response token, and the sequence score
    ``scores[b]`` is added on the last response token of row ``b`` (found from the mask, so rows
    of different lengths and left padding are handled).  Rows with no response token receive no
    reward at all.

    Args:
        scores: ``(B,)`` sequence-level rewards (e.g. the reward model's output).
        logprobs: ``(B, T)`` policy log-probabilities of the response tokens (sampling policy).
        ref_logprobs: ``(B, T)`` reference-model log-probabilities of the same tokens.
        mask: ``(B, T)`` response mask.
        kl_coef: weight of the KL penalty (``beta``).
        estimator: KL estimator, see :func:`karma_ray.algo.kl.kl_estimate`.

    Returns:
        ``(token_rewards, kl)``, both ``(B, T)`` and 0 at masked-out positions.
    """
    if scores.dim() != 1 or scores.shape[0] != logprobs.shape[0]:
        raise ValueError(f"scores must be (B,) with B={logprobs.shape[0]}, got {tuple(scores.shape)}")
    if mask.shape != logprobs.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and logprobs {tuple(logprobs.shape)} disagree")
    kl = kl_estimate(logprobs, ref_logprobs, estimator, mask=mask)
    last = last_token_index(mask)
    has_response = last >= 0
    placed = torch.where(has_response, scores.to(kl.dtype), torch.zeros((), dtype=kl.dtype, device=kl.device))
    score_tokens = torch.zeros_like(kl).scatter(1, last.clamp(min=0).unsqueeze(1), placed.unsqueeze(1))
    token_rewards = masked_fill_zero(-kl_coef * kl + score_tokens, mask)
    return token_rewards, kl


def normalize_scores(scores: torch.Tensor, mean: Number, std: Number, eps: float = 1e-8) -> torch.Tensor:
    """Standardise scores with given statistics: ``(scores - mean) / (std + eps)``.

    Args:
        scores: ``(B,)`` (any shape).
        mean, std: floats or tensors broadcastable to ``scores`` (e.g. from :class:`RunningMoments`).
        eps: guards against ``std == 0``.

    Returns:
        Tensor shaped like ``scores``.
    """
    return (scores - mean) / (std + eps)


def clip_scores(scores: torch.Tensor, limit: Optional[float]) -> torch.Tensor:
    """Clamp scores to ``[-limit, limit]`` (no-op when ``limit is None``).

    Args:
        scores: ``(B,)`` (any shape).
        limit: positive bound, or ``None``.

    Returns:
        Tensor shaped like ``scores``.
    """
    if limit is None:
        return scores.clone()
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    return scores.clamp(-limit, limit)


def length_penalty(lengths: torch.Tensor, target: float, coef: float, two_sided: bool = False) -> torch.Tensor:
    """Additive penalty for responses longer than ``target`` tokens.

    ``-coef * max(0, length - target)``; with ``two_sided=True`` it is ``-coef * |length - target|``
    (short responses are penalised too).

    Args:
        lengths: ``(B,)`` response lengths in tokens (int or float).
        target: length that is not penalised.
        coef: penalty per token of deviation (>= 0).
        two_sided: also penalise responses shorter than ``target``.

    Returns:
        ``(B,)`` float tensor of values <= 0, to be added to the scores.
    """
    dev = lengths.to(torch.get_default_dtype() if not lengths.is_floating_point() else lengths.dtype) - target
    dev = dev.abs() if two_sided else dev.clamp(min=0)
    return -coef * dev


def eos_penalty(ended_with_eos: torch.Tensor, penalty: float) -> torch.Tensor:
    """Additive penalty for truncated responses (those that hit the length limit without EOS).

    Args:
        ended_with_eos: ``(B,)`` bool, ``True`` when the response finished with an EOS token.
        penalty: magnitude subtracted from truncated responses' scores (>= 0).

    Returns:
        ``(B,)`` float tensor: 0 for finished responses, ``-penalty`` for truncated ones.
    """
    finished = ended_with_eos.bool()
    dtype = torch.get_default_dtype()
    return torch.where(
        finished,
        torch.zeros((), dtype=dtype, device=finished.device),
        torch.full((), -float(penalty), dtype=dtype, device=finished.device),
    )


class RunningMoments:
    """Streaming mean / variance of everything passed to :meth:`update`.

    Batches are merged with Chan et al.'s parallel algorithm (per-batch two-pass statistics,
    then ``M2 = M2_a + M2_b + delta^2 * n_a * n_b / n``), accumulated in float64 Python floats,
    which stays accurate over long runs and large offsets where naive sum / sum-of-squares fails.
    """

    def __init__(self) -> None:
        self.count = 0.0
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def var(self) -> float:
        """Unbiased variance (``torch.var`` default); 0 with fewer than two samples."""
        return self.variance(unbiased=True)

    @property
    def std(self) -> float:
        """Square root of the unbiased variance."""
        return math.sqrt(self.var)

    def variance(self, unbiased: bool = True) -> float:
        denom = self.count - 1.0 if unbiased else self.count
        return self._m2 / denom if denom > 0 else 0.0

    def update(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Tuple[float, float]:
        """Fold in the elements of ``x`` (only where ``mask != 0`` if a mask is given).

        Args:
            x: tensor of any shape, e.g. ``(B,)`` scores or ``(B, T)`` token rewards.
            mask: optional tensor shaped like ``x``; float masks act as frequency weights.

        Returns:
            ``(batch_mean, batch_std)`` of this batch alone (unbiased std; 0 if < 2 elements).
        """
        xd = x.detach().to(torch.float64)
        if mask is None:
            w = torch.ones_like(xd)
        else:
            w = torch.broadcast_to(_float_mask(mask.detach(), xd), xd.shape)
            xd = masked_fill_zero(xd, w)
        n_b = float(w.sum())
        if n_b <= 0:
            return 0.0, 0.0
        mean_b = float((xd * w).sum()) / n_b
        m2_b = float((w * (xd - mean_b) ** 2).sum())
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * n_b / n
        self._m2 = self._m2 + m2_b + delta * delta * n_a * n_b / n
        self.count = n
        batch_std = math.sqrt(m2_b / (n_b - 1.0)) if n_b > 1 else 0.0
        return mean_b, batch_std

    def state_dict(self) -> Dict[str, Any]:
        return {"count": self.count, "mean": self._mean, "m2": self._m2}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.count = float(state["count"])
        self._mean = float(state["mean"])
        self._m2 = float(state["m2"])

    def __repr__(self) -> str:
        return f"RunningMoments(count={self.count:g}, mean={self._mean:.6g}, std={self.std:.6g})"
