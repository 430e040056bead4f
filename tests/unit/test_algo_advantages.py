"""Hand-checked tests for karma_ray.algo.advantages."""

import math

import pytest
import torch

from karma_ray.algo import (
    discounted_returns,
    gae,
    grpo_advantages,
    reinforce_plus_plus_advantages,
    rloo_advantages,
    whiten_advantages,
)

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_values():
    # r = [1, 2, 3], V = [0.5, 1, 1.5]: reward-to-go = [6, 5, 3] -> A = [5.5, 4, 1.5], R = [6, 5, 3]
    # row 1 (length 2, junk after): r = [1, 1], V = [0, 2] -> rtg = [2, 1] -> A = [2, -1]
    rewards = t([[1.0, 2.0, 3.0], [1.0, 1.0, 50.0]])
    values = t([[0.5, 1.0, 1.5], [0.0, 2.0, -9.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, t([[5.5, 4.0, 1.5], [2.0, -1.0, 0.0]]))
    torch.testing.assert_close(ret, t([[6.0, 5.0, 3.0], [2.0, 1.0, 0.0]]))


def test_gae_hand_computed_gamma_09_lambda_08():
    # gamma*lam = 0.72
    # row 0: r = [0, 0, 1], V = [0.5, 0.5, 0.5], 3 response tokens, value past the end = 0
    #   delta_2 = 1 + 0.9*0    - 0.5 =  0.5
    #   delta_1 = 0 + 0.9*0.5  - 0.5 = -0.05
    #   delta_0 = 0 + 0.9*0.5  - 0.5 = -0.05
    #   A_2 = 0.5
    #   A_1 = -0.05 + 0.72*0.5  = 0.31
    #   A_0 = -0.05 + 0.72*0.31 = 0.1732
    #   R = A + V = [0.6732, 0.81, 1.0]
    # row 1: r = [1, 2, pad], V = [1, 1, pad], 2 response tokens (bootstrap 0 after position 1)
    #   delta_1 = 2 + 0 - 1 = 1 ;  delta_0 = 1 + 0.9*1 - 1 = 0.9
    #   A_1 = 1 ; A_0 = 0.9 + 0.72*1 = 1.62 ; R = [2.62, 2.0]
    rewards = t([[0.0, 0.0, 1.0], [1.0, 2.0, 4.0]])
    values = t([[0.5, 0.5, 0.5], [1.0, 1.0, 3.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t([[0.1732, 0.31, 0.5], [1.62, 1.0, 0.0]]))
    torch.testing.assert_close(ret, t([[0.6732, 0.81, 1.0], [2.62, 2.0, 0.0]]))


@pytest.mark.parametrize("pad", [0.0, 123.0, -5.0, math.nan])
def test_gae_padding_junk_does_not_change_results(pad):
    rewards = t([[0.0, 0.0, 1.0], [1.0, 2.0, pad]])
    values = t([[0.5, 0.5, 0.5], [1.0, 1.0, pad]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t([[0.1732, 0.31, 0.5], [1.62, 1.0, 0.0]]))
    torch.testing.assert_close(ret, t([[0.6732, 0.81, 1.0], [2.62, 2.0, 0.0]]))


def test_gae_skips_masked_gaps_and_left_padding():
    # row: [pad, tok, gap, tok, pad] -> only positions 1 and 3 are steps; same as the packed row
    # [tok, tok] with r = [0, 1], V = [0.5, 0.5]:
    #   delta_3 = 1 - 0.5 = 0.5 ; delta_1 = 0 + 0.9*0.5 - 0.5 = -0.05 ; A_1 = -0.05 + 0.72*0.5 = 0.31
    rewards = t([[9.0, 0.0, 9.0, 1.0, 9.0]])
    values = t([[9.0, 0.5, 9.0, 0.5, 9.0]])
    mask = t([[0, 1, 0, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t([[0.0, 0.31, 0.0, 0.5, 0.0]]))
    torch.testing.assert_close(ret, t([[0.0, 0.81, 0.0, 1.0, 0.0]]))


def test_gae_does_not_mutate_inputs():
    rewards = t([[0.0, 0.0, 1.0]])
    values = t([[0.5, 0.5, 0.5]])
    mask = t([[1, 1, 0]])
    before = (rewards.clone(), values.clone(), mask.clone())
    gae(rewards, values, mask, 0.9, 0.8)
    assert all(torch.equal(a, b) for a, b in zip(before, (rewards, values, mask)))


def test_whiten_advantages():
    # response values [1, 2, 3, 4]: mean 2.5, unbiased std sqrt(5/3) = 1.2909944
    adv = t([[1.0, 2.0, 3.0], [4.0, 77.0, 77.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    out = whiten_advantages(adv, mask, eps=0.0)
    torch.testing.assert_close(out, t([[-1.1618950, -0.3872983, 0.3872983], [1.1618950, 0.0, 0.0]]))


def test_grpo_advantages_with_group_size():
    # groups of 3: [1, 2, 3] -> mean 2, unbiased std sqrt((1 + 0 + 1)/2) = 1 -> [-1, 0, 1]
    #              [10, 10, 10] -> mean 10, std 0 -> (0) / (0 + eps) = 0
    scores = t([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    mask = t([[1, 1, 0]] * 6)
    adv = grpo_advantages(scores, 3, mask, eps=1e-6)
    expected_seq = t([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]) / (1.0 + 1e-6)
    expected_seq[3:] = 0.0
    torch.testing.assert_close(adv, expected_seq[:, None] * mask)
    # normalize_std=False (Dr. GRPO): just minus the group mean
    adv2 = grpo_advantages(scores, 3, mask, normalize_std=False)
    torch.testing.assert_close(adv2, t([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])[:, None] * mask)


def test_grpo_advantages_with_group_ids_interleaved():
    # ids [7, 3, 7, 3], scores [1, 5, 3, 9]
    # group 7: {1, 3}: mean 2, std sqrt((1 + 1)/1) = sqrt 2 -> [-1, 1]/sqrt2 = [-0.7071068, 0.7071068]
    # group 3: {5, 9}: mean 7, std sqrt((4 + 4)/1) = 2 sqrt 2 -> [-2, 2]/2.8284271 = same
    scores = t([1.0, 5.0, 3.0, 9.0])
    mask = t([[1, 1], [1, 0], [1, 1], [0, 1]])
    adv = grpo_advantages(scores, torch.tensor([7, 3, 7, 3]), mask, eps=0.0)
    a = 0.7071068
    torch.testing.assert_close(adv, t([[-a, -a], [-a, 0.0], [a, a], [0.0, a]]))


def test_grpo_singleton_group_is_zero_and_bad_group_size_raises():
    adv = grpo_advantages(t([4.0, 1.0, 2.0]), torch.tensor([0, 1, 1]), torch.ones(3, 2, dtype=D), eps=0.0)
    a = 0.7071068  # group {1, 2}: [-0.5, 0.5] / sqrt(0.5)
    torch.testing.assert_close(adv, t([[0.0, 0.0], [-a, -a], [a, a]]))
    with pytest.raises(ValueError):
        grpo_advantages(t([1.0, 2.0, 3.0]), 2, torch.ones(3, 2))


def test_rloo_advantages_hand_values():
    # group [1, 2, 6]: leave-one-out baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    #   -> A = [1-4, 2-3.5, 6-1.5] = [-3, -1.5, 4.5]
    # group [5, 5, 8]: baselines 6.5, 6.5, 5 -> [-1.5, -1.5, 3]
    scores = t([1.0, 2.0, 6.0, 5.0, 5.0, 8.0])
    mask = t([[1, 1]] * 5 + [[1, 0]])
    adv = rloo_advantages(scores, 3, mask)
    expected = t([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])[:, None] * mask
    torch.testing.assert_close(adv, expected)
    # with group ids; a singleton group gets 0
    adv2 = rloo_advantages(t([1.0, 3.0, 10.0]), torch.tensor([0, 0, 1]), torch.ones(3, 1, dtype=D))
    torch.testing.assert_close(adv2, t([[-2.0], [2.0], [0.0]]))


def test_discounted_returns_and_reinforce_plus_plus():
    # gamma = 0.5
    # row 0: r = [0, 0, 1]      -> G = [0.25, 0.5, 1]
    # row 1: r = [1, 1, pad]    -> G = [1 + 0.5*1, 1, 0] = [1.5, 1, 0]
    # whitening over the 5 response tokens [0.25, 0.5, 1, 1.5, 1]:
    #   mean = 4.25/5 = 0.85; deviations [-0.6, -0.35, 0.15, 0.65, 0.15]
    #   squares 0.36 + 0.1225 + 0.0225 + 0.4225 + 0.0225 = 0.95 -> unbiased var 0.95/4 = 0.2375
    #   std = 0.4873397 -> A = [-1.2311740, -0.7181848, 0.3077935, 1.3337719, 0.3077935]
    rewards = t([[0.0, 0.0, 1.0], [1.0, 1.0, 42.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    torch.testing.assert_close(discounted_returns(rewards, mask, 0.5), t([[0.25, 0.5, 1.0], [1.5, 1.0, 0.0]]))
    adv, ret = reinforce_plus_plus_advantages(rewards, mask, gamma=0.5, eps=0.0)
    torch.testing.assert_close(ret, t([[0.25, 0.5, 1.0], [1.5, 1.0, 0.0]]))
    torch.testing.assert_close(
        adv, t([[-1.2311740, -0.7181848, 0.3077935], [1.3337719, 0.3077935, 0.0]]), atol=1e-6, rtol=0
    )
