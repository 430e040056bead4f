"""Per-token KL estimators and KL-coefficient controllers.

Notation: ``logprobs = log p(x)`` under the policy being trained, ``ref_logprobs = log q(x)``
under the frozen reference model, for tokens ``x`` sampled from the policy ``p``.  With
``r = q(x) / p(x)`` (so ``log r = ref_logprobs - logprobs``), Schulman's estimators of
``KL(p || q)`` are

* ``k1 = -log r = logp - logq``              -- unbiased, high variance, can be negative;
* ``k2 = 0.5 * (log r)^2``                   -- biased, low variance, always >= 0;
* ``k3 = (r - 1) - log r``                   -- unbiased, low variance, always >= 0.

(See J. Schulman, "Approximating KL Divergence", 2020.)
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional

import torch

from .logprobs import masked_fill_zero

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: KLEstimator = "k1",
    mask: Optional[torch.Tensor] = None,
    log_ratio_clamp: Optional[float] = None,
) -> torch.Tensor:
    """Per-token estimate of ``KL(policy || reference)``.

    Args:
        logprobs: ``(B, T)`` policy log-probabilities of the sampled tokens.
        ref_logprobs: ``(B, T)`` reference-model log-probabilities of the same tokens.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring).
        mask: optional ``(B, T)`` response mask; masked-out positions of the result are 0.
        log_ratio_clamp: if given, ``logp - logq`` is clamped to ``[-c, c]`` first, which keeps
            ``k3``'s exponential finite for wildly diverged tokens.

    Returns:
        ``(B, T)`` per-token KL estimates.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} disagree"
        )
    if mask is not None:
        logprobs = masked_fill_zero(logprobs, mask)
        ref_logprobs = masked_fill_zero(ref_logprobs, mask)
    log_ratio = logprobs - ref_logprobs  # log p - log q
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio.square()
    elif estimator == "k3":
        # r = q/p = exp(-log_ratio);  k3 = (r - 1) - log r = exp(-lr) - 1 + lr
        kl = torch.expm1(-log_ratio) + log_ratio
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
    if mask is not None:
        kl = masked_fill_zero(kl, mask)
    return kl


class FixedKLController:
    """A KL coefficient that never changes (``update`` is a no-op)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Ignore the observation; returns the (unchanged) coefficient."""
        return self.value

    def state_dict(self) -> Dict[str, Any]:
        return {"type": "fixed", "value": self.value}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        _check_type(state, "fixed")
        self.value = float(state["value"])

    def __repr__(self) -> str:
        return f"FixedKLController(value={self.value})"


class AdaptiveKLController:
    """Proportional KL-coefficient controller of Ziegler et al. (2019), "Fine-Tuning Language
    Models from Human Preferences".

    After observing the KL of a batch, the coefficient is multiplied by
    ``1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon``: it grows when the policy
    drifts further than ``target`` from the reference and shrinks when it stays closer, by at
    most a factor ``1 +- 0.2 * n_steps / horizon`` per update.
    """

    ERROR_CLIP = 0.2

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adjust the coefficient after ``n_steps`` samples whose mean KL was ``current_kl``.

        Args:
            current_kl: observed mean (sequence-level) KL, a Python float.
            n_steps: number of samples (e.g. the batch size) the observation covers.

        Returns:
            The new coefficient (also stored in ``self.value``).
        """
        error = min(max(float(current_kl) / self.target - 1.0, -self.ERROR_CLIP), self.ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> Dict[str, Any]:
        return {"type": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        _check_type(state, "adaptive")
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value}, target={self.target}, horizon={self.horizon})"


def _check_type(state: Dict[str, Any], expected: str) -> None:
    found = state.get("type", expected)
    if found != expected:
        raise ValueError(f"state_dict is for a {found!r} KL controller, not {expected!r}")
