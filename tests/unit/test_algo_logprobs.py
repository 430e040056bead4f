"""Hand-checked tests for karma_ray.algo.logprobs (log-probs, entropy, masked reductions)."""

import math

import pytest
import torch

from karma_ray.algo import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

LN2 = math.log(2.0)
D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


# x = [[1, 2, 3], [4, pad, pad]] with mask [[1,1,1],[1,0,0]]:
#   sum = 10, n = 4, mean = 2.5
#   deviations: -1.5, -0.5, 0.5, 1.5 -> squares 2.25 + 0.25 + 0.25 + 2.25 = 5
#   biased var = 5/4 = 1.25, unbiased var = 5/3 = 1.6666667
MASK = t([[1, 1, 1], [1, 0, 0]])


def x_with_pad(pad):
    return t([[1.0, 2.0, 3.0], [4.0, pad, pad]])


def test_logprobs_from_logits_hand_example():
    # logits [0, 0, ln 2] -> exp = [1, 1, 2], sum = 4
    # log p(0) = 0 - ln 4 = -1.3862944 ; log p(2) = ln 2 - ln 4 = -ln 2 = -0.6931472
    logits = t([[[0.0, 0.0, LN2], [0.0, 0.0, LN2]]])
    tokens = torch.tensor([[0, 2]])
    out = logprobs_from_logits(logits, tokens)
    assert out.shape == (1, 2)
    torch.testing.assert_close(out, t([[-math.log(4.0), -LN2]]))


def test_logprobs_from_logits_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), ref)


def test_logprobs_from_logits_half_precision_is_float32_and_accurate():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 50, generator=g) * 3).to(torch.bfloat16)
    tokens = torch.randint(0, 50, (2, 4), generator=g)
    out = logprobs_from_logits(logits, tokens)
    assert out.dtype == torch.float32
    ref = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out, ref)


def test_logprobs_from_logits_has_gradient_and_rejects_bad_shapes():
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    out = logprobs_from_logits(logits, torch.tensor([[0, 1]]))
    out.sum().backward()
    # d/dl log softmax(l)_k = onehot_k - softmax = onehot - 1/3
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([2 / 3, -1 / 3, -1 / 3]))
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))


def test_entropy_hand_values():
    # uniform over 2: H = ln 2 = 0.6931472
    # logits [ln 3, 0] -> p = [0.75, 0.25]:
    #   H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.75*0.2876821 + 0.25*1.3862944 = 0.2157616 + 0.3465736 = 0.5623351
    # uniform over 4 (logits all 7): H = ln 4 = 1.3862944
    # (-inf logits are banned tokens with p = 0: they must not turn the entropy into nan)
    logits = t([[[0.0, 0.0, -math.inf, -math.inf], [math.log(3.0), 0.0, -math.inf, -math.inf],
                 [7.0, 7.0, 7.0, 7.0]]])
    ent = entropy_from_logits(logits)
    torch.testing.assert_close(ent, t([[LN2, 0.5623351446, math.log(4.0)]]))


def test_masked_sum_and_mean_hand_values():
    x = x_with_pad(0.0)
    torch.testing.assert_close(masked_sum(x, MASK), t(10.0))
    torch.testing.assert_close(masked_mean(x, MASK), t(2.5))
    # per row: (1+2+3)/3 = 2, 4/1 = 4
    torch.testing.assert_close(masked_mean(x, MASK, dim=1), t([2.0, 4.0]))
    torch.testing.assert_close(masked_sum(x, MASK, dim=1), t([6.0, 4.0]))
    # bool masks behave like 0/1 float masks
    torch.testing.assert_close(masked_mean(x, MASK.bool()), t(2.5))


@pytest.mark.parametrize("pad", [0.0, 1e6, -37.0, math.nan, math.inf])
def test_masked_reductions_ignore_padding_junk(pad):
    x = x_with_pad(pad)
    torch.testing.assert_close(masked_sum(x, MASK), t(10.0))
    torch.testing.assert_close(masked_mean(x, MASK), t(2.5))
    torch.testing.assert_close(masked_var(x, MASK), t(5.0 / 3.0))
    torch.testing.assert_close(masked_whiten(x, MASK), masked_whiten(x_with_pad(0.0), MASK))


def test_masked_var_hand_values():
    x = x_with_pad(99.0)
    torch.testing.assert_close(masked_var(x, MASK, unbiased=True), t(5.0 / 3.0))
    torch.testing.assert_close(masked_var(x, MASK, unbiased=False), t(1.25))
    # per row (dim=1): row 0 = [1,2,3] -> unbiased var 1; row 1 has one element -> 0
    torch.testing.assert_close(masked_var(x, MASK, dim=1), t([1.0, 0.0]))


def test_masked_mean_of_empty_mask_is_zero():
    x = t([[1.0, 2.0]])
    m = t([[0.0, 0.0]])
    assert masked_mean(x, m).item() == 0.0
    assert masked_var(x, m).item() == 0.0


def test_masked_whiten_hand_values():
    # (x - 2.5) / sqrt(5/3); sqrt(5/3) = 1.2909944
    # -> -1.5/1.2909944 = -1.1618950, -0.5/1.2909944 = -0.3872983, +0.3872983, +1.1618950
    x = x_with_pad(123.0)
    w = masked_whiten(x, MASK, eps=0.0)
    torch.testing.assert_close(w, t([[-1.1618950, -0.3872983, 0.3872983], [1.1618950, 0.0, 0.0]]))
    # shift_mean=False adds the mean (2.5) back on response tokens only
    w2 = masked_whiten(x, MASK, shift_mean=False, eps=0.0)
    torch.testing.assert_close(w2, t([[1.3381050, 2.1127017, 2.8872983], [3.6618950, 0.0, 0.0]]))


def test_masked_functions_do_not_mutate_inputs():
    x = x_with_pad(5.0)
    m = MASK.clone()
    before_x, before_m = x.clone(), m.clone()
    masked_sum(x, m), masked_mean(x, m), masked_var(x, m), masked_whiten(x, m)
    assert torch.equal(x, before_x) and torch.equal(m, before_m)
