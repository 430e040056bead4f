"""Advantage estimators: GAE (with a critic) and critic-free group / REINFORCE baselines."""

from __future__ import annotations

from typing import Tuple, Union

import torch

from .logprobs import _float_mask, masked_fill_zero, masked_whiten

Groups = Union[int, torch.Tensor]


def _check_bt(name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape != mask.shape:
        raise ValueError(f"{name} must be (B, T) like mask {tuple(mask.shape)}, got {tuple(x.shape)}")


def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016) over the response tokens.

    Scanning backwards over the response tokens ``t`` of each row (``t'`` = the next response
    token, if any)::

        delta_t = r_t + gamma * V_{t'} - V_t        (V past the last response token is 0)
        A_t     = delta_t + gamma * lam * A_{t'}
        R_t     = A_t + V_t

    Masked-out positions are skipped, not treated as steps: padding after the last response
    token contributes nothing, and masked gaps inside a row (e.g. tool output in multi-turn data)
    are stepped over.  With ``gamma = lam = 1``, ``A_t = sum_{k >= t} r_k - V_t``.

    Args:
        token_rewards: ``(B, T)`` per-token rewards (e.g. from ``shape_token_rewards``).
        values: ``(B, T)`` critic values ``V(s_t)``.
        mask: ``(B, T)`` response mask.
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and 0 at masked-out positions.
    """
    _check_bt("token_rewards", token_rewards, mask)
    _check_bt("values", values, mask)
    live = mask != 0
    rewards = masked_fill_zero(token_rewards, mask)
    vals = masked_fill_zero(values, mask).to(rewards.dtype)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    out = []
    for t in range(rewards.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - vals[:, t]
        adv_t = delta + gamma * lam * next_adv
        on = live[:, t]
        next_adv = torch.where(on, adv_t, next_adv)
        next_value = torch.where(on, vals[:, t], next_value)
        out.append(torch.where(on, adv_t, torch.zeros_like(adv_t)))
    advantages = torch.stack(out[::-1], dim=1) if out else torch.zeros_like(rewards)
    returns = masked_fill_zero(advantages + vals, mask)
    return advantages, returns


def whiten_advantages(
    advantages: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise advantages over all response tokens of the batch (zero mean, unit variance).

    Args:
        advantages: ``(B, T)``.
        mask: ``(B, T)`` response mask.
        shift_mean: subtract the mean (``False`` rescales only).
        eps: variance floor.

    Returns:
        ``(B, T)``, 0 at masked-out positions.
    """
    return masked_whiten(advantages, mask, shift_mean=shift_mean, eps=eps)


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted reward-to-go ``G_t = r_t + gamma * G_{t'}`` over the response tokens.

    Masked-out positions are skipped (as in :func:`gae`) and hold 0 in the result.

    Args:
        token_rewards: ``(B, T)``.
        mask: ``(B, T)`` response mask.
        gamma: discount factor.

    Returns:
        ``(B, T)`` returns-to-go.
    """
    _check_bt("token_rewards", token_rewards, mask)
    live = mask != 0
    rewards = masked_fill_zero(token_rewards, mask)
    running = torch.zeros_like(rewards[:, 0])
    out = []
    for t in range(rewards.shape[1] - 1, -1, -1):
        g = rewards[:, t] + gamma * running
        on = live[:, t]
        running = torch.where(on, g, running)
        out.append(torch.where(on, g, torch.zeros_like(g)))
    return torch.stack(out[::-1], dim=1) if out else torch.zeros_like(rewards)


def reinforce_plus_plus_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, eps: float = 1e-8
) -> Tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ advantages (Hu 2025): discounted return-to-go, whitened over the batch.

    Args:
        token_rewards: ``(B, T)`` per-token rewards (typically KL penalties plus the score on the
            last token, from ``shape_token_rewards``).
        mask: ``(B, T)`` response mask.
        gamma: discount factor.
        eps: variance floor for the whitening.

    Returns:
        ``(advantages, returns)``, both ``(B, T)``: ``returns`` is the raw return-to-go,
        ``advantages`` is it whitened with the masked mean / unbiased std of all response tokens.
        Both are 0 at masked-out positions.
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask, shift_mean=True, eps=eps), returns


def _group_index(groups: Groups, batch: int, device: torch.device) -> torch.Tensor:
    """Map ``groups`` (a group size or per-row ids) to dense ids ``0..G-1``, shape ``(B,)``."""
    if isinstance(groups, int):
        if groups <= 0 or batch % groups != 0:
            raise ValueError(f"batch size {batch} is not a multiple of group size {groups}")
        return torch.arange(batch, device=device) // groups
    if groups.shape != (batch,):
        raise ValueError(f"group ids must be ({batch},), got {tuple(groups.shape)}")
    return torch.unique(groups, return_inverse=True)[1].to(device)


def _group_sums(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    n_groups = int(index.max()) + 1 if index.numel() else 0
    return torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, index, values)


def _broadcast_to_tokens(per_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.dim() != 2 or mask.shape[0] != per_seq.shape[0]:
        raise ValueError(f"mask must be (B, T) with B={per_seq.shape[0]}, got {tuple(mask.shape)}")
    return masked_fill_zero(per_seq.unsqueeze(1) * _float_mask(mask, per_seq), mask)


def _float_scores(scores: torch.Tensor) -> torch.Tensor:
    if scores.dim() != 1:
        raise ValueError(f"scores must be (B,), got {tuple(scores.shape)}")
    return scores if scores.is_floating_point() else scores.to(torch.get_default_dtype())


def grpo_advantages(
    scores: torch.Tensor,
    groups: Groups,
    mask: torch.Tensor,
    eps: float = 1e-6,
    normalize_std: bool = True,
) -> torch.Tensor:
    """GRPO advantages (Shao et al. 2024): each score relative to its group of samples.

    ``A_i = (s_i - mean_g) / (std_g + eps)`` where ``g`` is the group (same prompt) of row ``i`` and
    ``std_g`` is the unbiased standard deviation of the group's scores; with
    ``normalize_std=False`` only the mean is removed (Dr. GRPO).  A group of a single sample, or
    of identical scores, has advantage 0 (even with ``eps=0``).  The per-sequence advantage is
    copied onto every response token.

    Args:
        scores: ``(B,)`` sequence scores.
        groups: either an int group size ``G`` (rows ``[0, G)``, ``[G, 2G)``, ... form groups;
            ``B`` must be a multiple of ``G``) or a ``(B,)`` tensor of group ids (any values).
        mask: ``(B, T)`` response mask.
        eps: added to the group std.
        normalize_std: divide by the group std.

    Returns:
        ``(B, T)`` token advantages, 0 at masked-out positions.
    """
    scores = _float_scores(scores)
    index = _group_index(groups, scores.shape[0], scores.device)
    counts = _group_sums(torch.ones_like(scores), index)
    mean = _group_sums(scores, index) / counts
    centered = scores - mean[index]
    adv = centered
    if normalize_std:
        sq = _group_sums(centered * centered, index)
        denom = torch.where(counts > 1, counts - 1, torch.ones_like(counts))
        std = torch.where(counts > 1, (sq / denom).sqrt(), torch.zeros_like(sq))
        scale = std[index] + eps
        # scale == 0 only for a group of identical scores with eps == 0: centered is 0 there too.
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        adv = torch.where(scale > 0, centered / safe, torch.zeros_like(centered))
    return _broadcast_to_tokens(adv, mask)


def rloo_advantages(scores: torch.Tensor, groups: Groups, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE Leave-One-Out advantages (Ahmadian et al. 2024).

    ``A_i = s_i - mean_{j in g, j != i} s_j = (n * s_i - sum_g) / (n - 1)`` for a group ``g`` of ``n``
    samples of the same prompt.  A group of a single sample has advantage 0.  The per-sequence
    advantage is copied onto every response token.

    Args:
        scores: ``(B,)`` sequence scores.
        groups: int group size or ``(B,)`` group ids (see :func:`grpo_advantages`).
        mask: ``(B, T)`` response mask.

    Returns:
        ``(B, T)`` token advantages, 0 at masked-out positions.
    """
    scores = _float_scores(scores)
    index = _group_index(groups, scores.shape[0], scores.device)
    counts = _group_sums(torch.ones_like(scores), index)[index]
    totals = _group_sums(scores, index)[index]
    denom = torch.where(counts > 1, counts - 1, torch.ones_like(counts))
    baseline = (totals - scores) / denom
    adv = torch.where(counts > 1, scores - baseline, torch.zeros_like(scores))
    return _broadcast_to_tokens(adv, mask)
