"""Hand-checked tests for karma_ray.algo.losses (PPO policy / value / KL / entropy terms)."""

import dataclasses
import math

import pytest
import torch

from karma_ray.algo import aggregate_loss, entropy_bonus, kl_loss, ppo_policy_loss, value_loss

D = torch.float64
LN2 = math.log(2.0)


def t(x):
    return torch.tensor(x, dtype=D)


def _policy_inputs(ratios, old=math.log(0.4)):
    """logprobs (requires grad) and old_logprobs such that exp(logprobs - old) == ratios."""
    old_lp = torch.full((1, len(ratios)), old, dtype=D)
    lp = (old_lp + torch.log(t([ratios]))).detach().requires_grad_(True)
    return lp, old_lp


def test_ppo_clipping_hand_values_and_zero_gradient_when_clipped():
    # clip_eps = 0.2, token-mean over N = 4 tokens
    #   r=1.5, A=+1: max(-1.5, -1.2) = -1.2  (clipped: gradient 0)
    #   r=0.5, A=-1: max( 0.5,  0.8) =  0.8  (clipped: gradient 0)
    #   r=1.5, A=-1: max( 1.5,  1.2) =  1.5  (unclipped: d/dlogp = -A*r = 1.5)
    #   r=0.5, A=+1: max(-0.5, -0.8) = -0.5  (unclipped: d/dlogp = -A*r = -0.5)
    # loss = (-1.2 + 0.8 + 1.5 - 0.5) / 4 = 0.6 / 4 = 0.15
    # grads = [0, 0, 1.5/4, -0.5/4] = [0, 0, 0.375, -0.125]
    lp, old = _policy_inputs([1.5, 0.5, 1.5, 0.5])
    adv = t([[1.0, -1.0, -1.0, 1.0]])
    mask = torch.ones(1, 4, dtype=D)
    loss, stats = ppo_policy_loss(lp, old, adv, mask, clip_eps_low=0.2)
    assert loss.item() == pytest.approx(0.15)
    loss.backward()
    torch.testing.assert_close(lp.grad, t([[0.0, 0.0, 0.375, -0.125]]))
    # clipped on 2 of 4 tokens
    assert stats.clip_frac.item() == pytest.approx(0.5)
    # approx_kl = mean(old - new) = mean(-ln r) = (2*(-0.4054651) + 2*0.6931472)/4 = 0.1438410
    assert stats.approx_kl.item() == pytest.approx(0.1438410, abs=1e-7)
    # ratio_mean = (1.5 + 0.5 + 1.5 + 0.5)/4 = 1
    assert stats.ratio_mean.item() == pytest.approx(1.0)
    assert stats.dual_clip_frac.item() == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.clip_frac = torch.tensor(0.0)


def test_ppo_inside_clip_range_is_plain_policy_gradient():
    # r = 1.1, A = 2: loss = -2.2, d/dlogp = -A*r = -2.2 ; approx_kl = -ln 1.1 = -0.0953102
    lp, old = _policy_inputs([1.1])
    loss, stats = ppo_policy_loss(lp, old, t([[2.0]]), torch.ones(1, 1), clip_eps_low=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-2.2)
    assert lp.grad.item() == pytest.approx(-2.2)
    assert stats.clip_frac.item() == 0.0
    assert stats.approx_kl.item() == pytest.approx(-0.0953102, abs=1e-7)


def test_ppo_dual_clip():
    # clip 0.2, dual_clip c = 3, N = 3
    #   r=5, A=-1: max(5, 1.2) = 5 -> min(5, -A*c = 3) = 3   (dual-clipped: gradient 0)
    #   r=2, A=-1: max(2, 1.2) = 2 -> min(2, 3) = 2          (gradient -A*r = 2, /3)
    #   r=5, A=+1: max(-5, -1.2) = -1.2 (dual clip only applies to A < 0; gradient 0)
    # loss = (3 + 2 - 1.2)/3 = 1.2666667 ; without dual clip (5 + 2 - 1.2)/3 = 1.9333333
    lp, old = _policy_inputs([5.0, 2.0, 5.0])
    adv = t([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=D)
    loss, stats = ppo_policy_loss(lp, old, adv, mask, clip_eps_low=0.2, dual_clip=3.0)
    loss.backward()
    assert loss.item() == pytest.approx(3.8 / 3)
    torch.testing.assert_close(lp.grad, t([[0.0, 2.0 / 3.0, 0.0]]))
    assert stats.dual_clip_frac.item() == pytest.approx(1 / 3)
    assert stats.clip_frac.item() == pytest.approx(1 / 3)  # only the A>0, r=5 token
    no_dual, _ = ppo_policy_loss(lp, old, adv, mask, clip_eps_low=0.2)
    assert no_dual.item() == pytest.approx(5.8 / 3)
    with pytest.raises(ValueError):
        ppo_policy_loss(lp, old, adv, mask, dual_clip=1.0)


def test_ppo_asymmetric_clip_higher():
    # r = 1.25, A = +1: symmetric 0.2 -> clipped at 1.2: loss -1.2, grad 0
    #                   clip_eps_high 0.28 -> 1.25 < 1.28 unclipped: loss -1.25, grad -1.25
    # r = 0.75, A = -1: the low side stays at 1 - 0.2 = 0.8: max(0.75, 0.8) = 0.8, grad 0
    for high, exp_loss, exp_grad in [(None, -1.2, 0.0), (0.28, -1.25, -1.25)]:
        lp, old = _policy_inputs([1.25])
        loss, _ = ppo_policy_loss(lp, old, t([[1.0]]), torch.ones(1, 1), 0.2, clip_eps_high=high)
        loss.backward()
        assert loss.item() == pytest.approx(exp_loss)
        assert lp.grad.item() == pytest.approx(exp_grad)
    lp, old = _policy_inputs([0.75])
    loss, _ = ppo_policy_loss(lp, old, t([[-1.0]]), torch.ones(1, 1), 0.2, clip_eps_high=0.28)
    loss.backward()
    assert loss.item() == pytest.approx(0.8)
    assert lp.grad.item() == 0.0


@pytest.mark.parametrize("pad", [0.0, 50.0, -1e4, math.nan])
def test_ppo_padding_junk_changes_nothing_and_gets_zero_gradient(pad):
    def run(pad_value):
        lp = t([[math.log(0.6), math.log(0.3), pad_value]]).requires_grad_(True)
        old = t([[math.log(0.5), math.log(0.5), pad_value * 0.3]])
        adv = t([[1.0, -2.0, pad_value]])
        mask = t([[1, 1, 0]])
        loss, stats = ppo_policy_loss(lp, old, adv, mask, 0.2, dual_clip=3.0)
        loss.backward()
        return loss, stats, lp.grad

    loss0, stats0, grad0 = run(0.0)
    loss1, stats1, grad1 = run(pad)
    torch.testing.assert_close(loss1, loss0)
    for f in ("clip_frac", "dual_clip_frac", "approx_kl", "ratio_mean"):
        torch.testing.assert_close(getattr(stats1, f), getattr(stats0, f))
    torch.testing.assert_close(grad1, grad0)
    assert grad1[0, 2].item() == 0.0


def test_loss_aggregation_modes():
    # ratio = 1 and A = -l gives per-token loss l = [[1, 2, 3], [4, pad, pad], [pad, pad, pad]]
    # (row 2 has no response tokens and is ignored by the sequence means)
    #   token-mean          = (1+2+3+4)/4 = 2.5
    #   seq-mean-token-sum  = (6 + 4)/2   = 5
    #   seq-mean-token-mean = (2 + 4)/2   = 3
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    lmat = t([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    lp = torch.zeros(3, 3, dtype=D)
    for agg, expected in [("token-mean", 2.5), ("seq-mean-token-sum", 5.0), ("seq-mean-token-mean", 3.0)]:
        assert aggregate_loss(lmat, mask, agg).item() == pytest.approx(expected)
        loss, _ = ppo_policy_loss(lp, lp, -lmat, mask, 0.2, loss_agg=agg)
        assert loss.item() == pytest.approx(expected)
    with pytest.raises(ValueError):
        aggregate_loss(lmat, mask, "sum")


def test_value_loss_clipping_hand_values():
    # clip_range 0.2
    # token 0: v=1.0, old=0.5, R=1.2: v - old = 0.5 -> clipped to 0.2 -> v_clip = 0.7
    #          (v-R)^2 = 0.04, (v_clip-R)^2 = 0.25 -> max 0.25 (clipped branch, no gradient)
    # token 1: v=2.0, old=1.9, R=1.0: inside the range, v_clip = v, both errors 1.0
    #          d/dv of 0.5*mean = 0.5 * 2*(2-1) / 2 = 0.5
    # token 2: padding
    # loss = 0.5 * (0.25 + 1.0)/2 = 0.3125 ; clip_frac = 1/2
    values = t([[1.0, 2.0, 77.0]]).requires_grad_(True)
    old = t([[0.5, 1.9, -3.0]])
    returns = t([[1.2, 1.0, 8.0]])
    mask = t([[1, 1, 0]])
    loss, clip_frac = value_loss(values, old, returns, mask, clip_range=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.3125)
    assert clip_frac.item() == pytest.approx(0.5)
    torch.testing.assert_close(values.grad, t([[0.0, 0.5, 0.0]]))
    # unclipped: 0.5 * (0.04 + 1.0)/2 = 0.26
    plain, cf = value_loss(values, old, returns, mask, clip_range=None)
    assert plain.item() == pytest.approx(0.26)
    assert cf.item() == 0.0
    # padding junk is ignored
    junk, _ = value_loss(t([[1.0, 2.0, math.nan]]), t([[0.5, 1.9, 1e9]]), t([[1.2, 1.0, math.inf]]), mask, 0.2)
    assert junk.item() == pytest.approx(0.3125)


def test_value_loss_is_pessimistic():
    # v=3, old=2, R=3: unclipped error 0 but v_clip = 2.2 -> (2.2-3)^2 = 0.64 -> loss 0.5*0.64 = 0.32
    loss, clip_frac = value_loss(t([[3.0]]), t([[2.0]]), t([[3.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.32)
    assert clip_frac.item() == 1.0


def test_kl_loss_k3_value_and_gradient():
    # p = [0.5, 0.3, pad], q = [0.25, 0.3, pad], mask [1, 1, 0]
    # k3 = [0.1931472, 0] -> token-mean 0.0965736
    # d k3 / d logp = 1 - q/p = [0.5, 0] -> /2 tokens = [0.25, 0, 0]
    lp = t([[math.log(0.5), math.log(0.3), 5.0]]).requires_grad_(True)
    ref = t([[math.log(0.25), math.log(0.3), math.nan]])
    loss = kl_loss(lp, ref, t([[1, 1, 0]]), estimator="k3")
    loss.backward()
    assert loss.item() == pytest.approx(0.0965736, abs=1e-7)
    torch.testing.assert_close(lp.grad, t([[0.25, 0.0, 0.0]]))
    # k1: (ln 2 + 0)/2 = 0.3465736
    assert kl_loss(lp, ref, t([[1, 1, 0]]), estimator="k1").item() == pytest.approx(LN2 / 2)


def test_entropy_bonus():
    # entropies [ln 2, 0.5623351, pad], coef 0.01: -0.01 * (0.6931472 + 0.5623351)/2 = -0.0062774
    ent = t([[LN2, 0.5623351, 1e6]])
    out = entropy_bonus(ent, t([[1, 1, 0]]), coef=0.01)
    assert out.item() == pytest.approx(-0.0062774, abs=1e-7)
