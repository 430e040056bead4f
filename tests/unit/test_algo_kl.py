"""Hand-checked tests for karma_ray.algo.kl (estimators and KL controllers)."""

import math

import pytest
import torch

from karma_ray.algo import AdaptiveKLController, FixedKLController, kl_estimate

LN2 = math.log(2.0)
D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


# Three tokens, p = policy prob, q = reference prob:
#   token 0: p = 0.5,  q = 0.25 -> logp - logq = ln 2 = 0.6931472
#   token 1: p = q = 0.3        -> 0
#   token 2: p = 0.25, q = 0.5  -> -ln 2
LOGP = t([[math.log(0.5), math.log(0.3), math.log(0.25)]])
LOGQ = t([[math.log(0.25), math.log(0.3), math.log(0.5)]])


def test_k1_is_log_ratio():
    torch.testing.assert_close(kl_estimate(LOGP, LOGQ, "k1"), t([[LN2, 0.0, -LN2]]))


def test_k2_is_half_squared_log_ratio():
    # 0.5 * (ln 2)^2 = 0.5 * 0.4804530 = 0.2402265 (same for -ln 2)
    torch.testing.assert_close(kl_estimate(LOGP, LOGQ, "k2"), t([[0.2402265, 0.0, 0.2402265]]))


def test_k3_hand_values():
    # k3 = q/p - ln(q/p) - 1
    #   token 0: q/p = 0.5 -> 0.5 - (-0.6931472) - 1 = 0.1931472
    #   token 1: q/p = 1   -> 1 - 0 - 1 = 0
    #   token 2: q/p = 2   -> 2 - 0.6931472 - 1 = 0.3068528
    torch.testing.assert_close(kl_estimate(LOGP, LOGQ, "k3"), t([[0.1931472, 0.0, 0.3068528]]))


def test_k3_and_k2_are_non_negative():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 32, generator=g, dtype=D) * 3
    b = torch.randn(64, 32, generator=g, dtype=D) * 3
    assert (kl_estimate(a, b, "k3") >= 0).all()
    assert (kl_estimate(a, b, "k2") >= 0).all()
    assert (kl_estimate(a, b, "k1") < 0).any()  # k1 is not


def test_k1_and_k3_are_unbiased_estimates_of_kl():
    # p = [0.5, 0.5], q = [0.25, 0.75]
    # KL(p||q) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5*0.6931472 + 0.5*(-0.4054651)
    #          = 0.3465736 - 0.2027326 = 0.1438410
    g = torch.Generator().manual_seed(1234)
    n = 200_000
    x = torch.randint(0, 2, (1, n), generator=g)  # samples from p (uniform)
    logp = torch.full((1, n), math.log(0.5), dtype=D)
    logq = torch.where(x == 0, t(math.log(0.25)), t(math.log(0.75)))
    true_kl = 0.1438410
    assert kl_estimate(logp, logq, "k3").mean().item() == pytest.approx(true_kl, abs=3e-3)
    assert kl_estimate(logp, logq, "k1").mean().item() == pytest.approx(true_kl, abs=5e-3)
    # k2 is biased: E[0.5 (ln p/q)^2] = 0.5*(0.5*0.4804530 + 0.5*0.1644019) = 0.1612137
    assert kl_estimate(logp, logq, "k2").mean().item() == pytest.approx(0.1612137, abs=3e-3)


def test_kl_estimate_mask_zeroes_padding_and_ignores_junk():
    mask = t([[1, 1, 0]])
    junk_p = LOGP.clone()
    junk_p[0, 2] = math.nan
    out = kl_estimate(junk_p, LOGQ, "k3", mask=mask)
    torch.testing.assert_close(out, t([[0.1931472, 0.0, 0.0]]))


def test_kl_estimate_rejects_unknown_estimator_and_shape_mismatch():
    with pytest.raises(ValueError):
        kl_estimate(LOGP, LOGQ, "k4")
    with pytest.raises(ValueError):
        kl_estimate(LOGP, LOGQ[:, :2], "k1")


def test_kl_estimate_clamp_keeps_k3_finite():
    # log ratio -1000 would give exp(1000) = inf; clamped to -20: k3 = e^20 - 1 - 20
    out = kl_estimate(t([[-1000.0]]), t([[0.0]]), "k3", log_ratio_clamp=20.0)
    assert out.item() == pytest.approx(math.exp(20) - 21)


def test_fixed_controller_never_moves():
    c = FixedKLController(0.05)
    assert c.update(100.0, 512) == 0.05
    assert c.value == 0.05
    c2 = FixedKLController(1.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05


def test_adaptive_controller_direction_and_clipping():
    # init 0.1, target 6, horizon 10000, n_steps 256 -> step scale 256/10000 = 0.0256
    #   kl = 12  : error = 12/6 - 1 = 1    -> clipped to 0.2  -> coef *= 1 + 0.2*0.0256 = 1.00512
    #   kl = 6.6 : error = 0.1 (unclipped)                     -> coef *= 1.00256
    #   kl = 3   : error = -0.5            -> clipped to -0.2 -> coef *= 0.99488
    #   kl = 6   : error = 0                                    -> unchanged
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(12.0, 256) == pytest.approx(0.100512)
    assert c.value == pytest.approx(0.100512)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(6.6, 256) == pytest.approx(0.100256)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(3.0, 256) == pytest.approx(0.099488)
    # far larger KL is clipped to the same step as kl = 12
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(1e9, 256) == pytest.approx(0.100512)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(6.0, 256) == pytest.approx(0.1)


def test_adaptive_controller_compounds_and_resumes_exactly():
    # two steps at kl = 12: 0.1 * 1.00512^2 = 0.1010266
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(12.0, 256)
    state = c.state_dict()
    c.update(12.0, 256)
    assert c.value == pytest.approx(0.1 * 1.00512 * 1.00512)
    resumed = AdaptiveKLController(0.5, target=1.0, horizon=1.0)
    resumed.load_state_dict(state)
    resumed.update(12.0, 256)
    assert resumed.value == c.value  # bit-exact
    assert (resumed.target, resumed.horizon) == (6.0, 10000.0)
    with pytest.raises(ValueError):
        FixedKLController(0.1).load_state_dict(state)


def test_adaptive_controller_validates_arguments():
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=1.0, horizon=0)
