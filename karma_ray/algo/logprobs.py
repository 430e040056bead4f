"""Token log-probabilities, entropies and masked reductions.

Shape conventions used throughout :mod:`karma_ray.algo`:

* ``B`` -- batch size (number of sequences), ``T`` -- number of positions, ``V`` -- vocab size.
* ``mask`` is a ``(B, T)`` *response mask*: 1 (or ``True``) on response tokens, 0 on prompt and
  padding positions.  Float masks are used as weights; bool masks are converted to 0/1.

Every function here is pure: inputs are never modified in place, and values sitting in masked
slots (even ``nan``/``inf``) never leak into results -- masked slots are selected away with
``torch.where`` rather than multiplied by zero.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

Dim = Optional[Union[int, Tuple[int, ...]]]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a floating tensor with ``like``'s dtype (bool -> 0/1)."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return mask.to(dtype=dtype)


def masked_fill_zero(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the masked-out slots of ``x`` by 0 (a new tensor, ``x`` is untouched).

    Args:
        x: ``(B, T)`` (any shape broadcastable with ``mask``).
        mask: ``(B, T)`` response mask; slots where ``mask == 0`` become 0.

    Returns:
        ``(B, T)`` tensor.  Gradients flowing to masked slots of ``x`` are exactly 0 (never ``nan``),
        which is why this is used to sanitise inputs before any arithmetic.
    """
    return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chosen token under ``softmax(logits)``.

    Uses ``log p(token) = logits[token] - logsumexp(logits)``, so the full ``(B, T, V)``
    log-softmax is never kept around.  Half-precision logits (fp16/bf16) are processed one
    sequence at a time in float32, because a logsumexp over a large vocabulary is too
    inaccurate in 16-bit; the result is then float32.

    Args:
        logits: ``(B, T, V)`` unnormalised scores (any leading shape ``(..., V)`` works).
        tokens: ``(B, T)`` integer token ids (the leading shape of ``logits``).

    Returns:
        ``(B, T)`` log-probabilities (float32 for half-precision inputs, else ``logits.dtype``).
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree")
    index = tokens.long().unsqueeze(-1)
    if logits.dtype in _LOW_PRECISION:
        if logits.dim() < 2:
            return torch.log_softmax(logits.float(), dim=-1).gather(-1, index).squeeze(-1)
        rows = [
            torch.log_softmax(row.float(), dim=-1).gather(-1, idx).squeeze(-1)
            for row, idx in zip(logits, index)
        ]
        return torch.stack(rows, dim=0)
    picked = logits.gather(-1, index).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (in nats) of the categorical distribution ``softmax(logits)`` at each position.

    ``H = logsumexp(l) - sum_v softmax(l)_v * l_v`` (equal to ``-sum p log p``).  ``-inf`` logits
    (banned tokens) are allowed.  Half-precision logits are computed in float32.

    Args:
        logits: ``(B, T, V)``.

    Returns:
        ``(B, T)`` entropies.
    """
    work = logits.float() if logits.dtype in _LOW_PRECISION else logits
    probs = torch.softmax(work, dim=-1)
    # -inf logits (banned tokens) have p = 0 and contribute 0, not 0 * -inf = nan.
    finite = torch.where(probs > 0, work, torch.zeros((), dtype=work.dtype, device=work.device))
    return torch.logsumexp(work, dim=-1) - (probs * finite).sum(dim=-1)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Dim = None) -> torch.Tensor:
    """Sum of ``x * mask`` over ``dim`` (all elements when ``dim is None``).

    Args:
        x: ``(B, T)`` values.
        mask: ``(B, T)`` response mask (weights when float).
        dim: dimension(s) to reduce; ``None`` reduces everything to a scalar.

    Returns:
        Scalar when ``dim is None``, else ``x`` with ``dim`` reduced (e.g. ``(B,)`` for ``dim=1``).
    """
    weighted = masked_fill_zero(x, mask) * _float_mask(mask, x)
    if dim is None:
        return weighted.sum()
    return weighted.sum(dim=dim)


def _mask_count(mask: torch.Tensor, like: torch.Tensor, dim: Dim) -> torch.Tensor:
    m = torch.broadcast_to(_float_mask(mask, like), like.shape)
    return m.sum() if dim is None else m.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Dim = None) -> torch.Tensor:
    """Mean of ``x`` over the response positions: ``sum(x * mask) / sum(mask)``.

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` response mask.
        dim: ``None`` (scalar over all tokens) or the dimension(s) to reduce (``dim=1`` gives a
            per-sequence ``(B,)`` mean).

    Returns:
        Scalar or reduced tensor.  Where the mask is empty the mean is defined as 0.
    """
    total = masked_sum(x, mask, dim)
    count = _mask_count(mask, x, dim)
    safe = torch.where(count > 0, count, torch.ones_like(count))
    return torch.where(count > 0, total / safe, torch.zeros_like(total))


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, dim: Dim = None) -> torch.Tensor:
    """Variance of ``x`` over the response positions.

    ``var = sum(mask * (x - mean)^2) / sum(mask)``, multiplied by ``n / (n - 1)`` (Bessel's
    correction, ``n = sum(mask)``) when ``unbiased``.

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` response mask.
        unbiased: apply Bessel's correction (like ``torch.var``'s default).
        dim: ``None`` for a scalar over all tokens, or the dimension(s) to reduce.

    Returns:
        Scalar or reduced tensor.  With fewer than two masked-in elements the variance is 0.
    """
    mean = masked_mean(x, mask, dim)
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        for d in sorted(d % x.dim() for d in dims):
            mean = mean.unsqueeze(d)
    centered = masked_fill_zero(x, mask) - mean
    var = masked_mean(centered * centered, mask, dim)
    if unbiased:
        n = _mask_count(mask, x, dim)
        safe = torch.where(n > 1, n - 1, torch.ones_like(n))
        var = torch.where(n > 1, var * n / safe, torch.zeros_like(var))
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to zero mean / unit variance using only the response positions.

    ``y = (x - mean) / sqrt(var + eps)`` with the masked mean and unbiased masked variance
    taken over the whole batch.  With ``shift_mean=False`` the mean is added back (only the
    scale changes), as is customary for advantages in some PPO variants.

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` response mask.
        shift_mean: subtract the mean (``True``) or keep it (``False``).
        eps: added to the variance before the square root.

    Returns:
        ``(B, T)``; masked-out positions are 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (masked_fill_zero(x, mask) - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return masked_fill_zero(out, mask)
