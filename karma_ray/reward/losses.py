"""Reward-model losses (torch only): regression on the standardized karma target, Bradley-Terry on sibling pairs.

The total is `regression_weight * regression + pairwise_weight * bradley_terry` (either weight may be 0).
Bradley-Terry (as in InstructGPT's reward model, Ouyang et al. 2022): P(chosen > rejected) =
sigmoid(s_chosen - s_rejected); with a margin m (Llama 2's margin loss, Touvron et al. 2023) the loss is
-log sigmoid(s_chosen - s_rejected - m).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from karma_ray.reward.config import LossConfig


def regression_loss(scores: torch.Tensor, targets: torch.Tensor, kind: str, huber_delta: float = 1.0) -> torch.Tensor:
    """scores, targets: (B,) -> scalar mean loss. kind: 'mse' or 'huber'."""
    if kind == "mse":
        return F.mse_loss(scores, targets)
    if kind == "huber":
        return F.huber_loss(scores, targets, delta=huber_delta)
    raise ValueError(f"unknown regression loss {kind!r}")


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """chosen, rejected: (P,) scores of the preferred and the other reply -> mean -log sigmoid(c - r - margin)."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


@dataclass
class LossParts:
    total: torch.Tensor  # scalar, what backward() runs on
    regression: float | None
    pairwise: float | None


def reward_loss(
    cfg: LossConfig,
    scores: torch.Tensor | None = None,  # (B,) scores of regression examples
    targets: torch.Tensor | None = None,  # (B,) standardized targets
    chosen: torch.Tensor | None = None,  # (P,)
    rejected: torch.Tensor | None = None,  # (P,)
) -> LossParts:
    """The configured combination; a part whose inputs are None or empty is skipped."""
    total, reg, pw = None, None, None
    if cfg.regression_on and scores is not None and scores.numel():
        r = regression_loss(scores, targets, cfg.regression, cfg.huber_delta)
        total, reg = cfg.regression_weight * r, float(r.detach())
    if cfg.pairwise_on and chosen is not None and chosen.numel():
        p = bradley_terry_loss(chosen, rejected, cfg.pairwise_margin)
        total = cfg.pairwise_weight * p if total is None else total + cfg.pairwise_weight * p
        pw = float(p.detach())
    if total is None:
        raise ValueError("reward_loss: no loss part had inputs")
    return LossParts(total, reg, pw)
