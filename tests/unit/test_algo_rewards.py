"""Hand-checked tests for karma_ray.algo.rewards."""

import math

import pytest
import torch

from karma_ray.algo import (
    RunningMoments,
    clip_scores,
    eos_penalty,
    last_token_index,
    length_penalty,
    normalize_scores,
    shape_token_rewards,
)

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def test_last_token_index_for_right_left_and_empty_rows():
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 0, 2, -1]


def _kl_inputs(pad):
    # ref_logprobs = 0, so k1 = logprobs: [[0.1, 0.2, 0.3], [0.4, 0.5, pad]]
    logprobs = t([[0.1, 0.2, 0.3], [0.4, 0.5, pad]])
    ref = t([[0.0, 0.0, 0.0], [0.0, 0.0, pad * 0.5]])
    return logprobs, ref


def test_shape_token_rewards_puts_score_on_last_response_token_of_each_row():
    # rows of different lengths: row 0 has 3 response tokens, row 1 has 2
    # kl_coef = 0.5, k1 = [[0.1, 0.2, 0.3], [0.4, 0.5, -]]
    # row 0: [-0.05, -0.10, -0.15 + 1.0] = [-0.05, -0.10, 0.85]
    # row 1: [-0.20, -0.25 + 2.0, 0]    = [-0.20, 1.75, 0.0]
    scores = t([1.0, 2.0])
    mask = t([[1, 1, 1], [1, 1, 0]])
    logprobs, ref = _kl_inputs(0.0)
    rewards, kl = shape_token_rewards(scores, logprobs, ref, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, t([[-0.05, -0.10, 0.85], [-0.20, 1.75, 0.0]]))
    torch.testing.assert_close(kl, t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]]))
    # summed over the row: score - kl_coef * sum(kl)
    torch.testing.assert_close(rewards.sum(1), t([1.0 - 0.5 * 0.6, 2.0 - 0.5 * 0.9]))


@pytest.mark.parametrize("pad", [7.0, -1e4, math.nan])
def test_shape_token_rewards_ignores_padding_junk(pad):
    scores = t([1.0, 2.0])
    mask = t([[1, 1, 1], [1, 1, 0]])
    clean = shape_token_rewards(scores, *_kl_inputs(0.0), mask, kl_coef=0.5)
    dirty = shape_token_rewards(scores, *_kl_inputs(pad), mask, kl_coef=0.5)
    torch.testing.assert_close(dirty[0], clean[0])
    torch.testing.assert_close(dirty[1], clean[1])


def test_shape_token_rewards_left_padding_empty_row_and_k3():
    # row 0 response occupies positions 1..2 (left padding); row 1 is empty (gets nothing)
    # logprobs = ln 0.5, ref = ln 0.25 everywhere -> k3 = 0.5 - ln 0.5 - 1 = 0.1931472
    # row 0: [0, -0.1*0.1931472, -0.1*0.1931472 + 3] = [0, -0.0193147, 2.9806853]
    mask = t([[0, 1, 1], [0, 0, 0]])
    logprobs = torch.full((2, 3), math.log(0.5), dtype=D)
    ref = torch.full((2, 3), math.log(0.25), dtype=D)
    rewards, kl = shape_token_rewards(t([3.0, 5.0]), logprobs, ref, mask, kl_coef=0.1, estimator="k3")
    torch.testing.assert_close(rewards, t([[0.0, -0.0193147, 2.9806853], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(kl, t([[0.0, 0.1931472, 0.1931472], [0.0, 0.0, 0.0]]))


def test_shape_token_rewards_does_not_mutate_and_checks_shapes():
    scores = t([1.0, 2.0])
    mask = t([[1, 1, 1], [1, 1, 0]])
    logprobs, ref = _kl_inputs(3.0)
    copies = [x.clone() for x in (scores, logprobs, ref, mask)]
    shape_token_rewards(scores, logprobs, ref, mask, kl_coef=0.5)
    for a, b in zip(copies, (scores, logprobs, ref, mask)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        shape_token_rewards(t([1.0]), logprobs, ref, mask, kl_coef=0.5)


def test_normalize_and_clip_scores():
    # (1 - 2) / 2 = -0.5 ; (3 - 2) / 2 = 0.5
    torch.testing.assert_close(normalize_scores(t([1.0, 3.0]), 2.0, 2.0, eps=0.0), t([-0.5, 0.5]))
    torch.testing.assert_close(clip_scores(t([-5.0, 0.5, 5.0]), 3.0), t([-3.0, 0.5, 3.0]))
    s = t([-5.0, 5.0])
    out = clip_scores(s, None)
    torch.testing.assert_close(out, s)
    assert out is not s


def test_length_penalty():
    # target 20, coef 0.01: one-sided -> [0, 0, -0.01*10] ; two-sided -> [-0.1, 0, -0.1]
    lengths = torch.tensor([10, 20, 30])
    torch.testing.assert_close(length_penalty(lengths, 20, 0.01), torch.tensor([0.0, 0.0, -0.1]))
    torch.testing.assert_close(
        length_penalty(lengths, 20, 0.01, two_sided=True), torch.tensor([-0.1, 0.0, -0.1])
    )


def test_eos_penalty_penalises_only_truncated_responses():
    out = eos_penalty(torch.tensor([True, False, True]), 1.5)
    torch.testing.assert_close(out, torch.tensor([0.0, -1.5, 0.0]))


def test_running_moments_hand_values():
    # [1, 2, 3] then [4]: mean 2.5, unbiased var 5/3, population var 5/4
    rm = RunningMoments()
    assert rm.update(t([1.0, 2.0, 3.0])) == pytest.approx((2.0, 1.0))  # batch mean/std
    rm.update(t([4.0]))
    assert rm.count == 4
    assert rm.mean == pytest.approx(2.5)
    assert rm.var == pytest.approx(5 / 3)
    assert rm.variance(unbiased=False) == pytest.approx(1.25)
    assert rm.std == pytest.approx(math.sqrt(5 / 3))


def test_running_moments_matches_torch_over_concatenated_batches():
    g = torch.Generator().manual_seed(0)
    # large offset + batches of varied size and scale: where naive sum-of-squares breaks down
    batches = [torch.randn(n, generator=g, dtype=D) * s + 1e6 for n, s in [(5, 1.0), (17, 3.0), (1, 1.0), (64, 0.5)]]
    rm = RunningMoments()
    for b in batches:
        rm.update(b)
    allx = torch.cat(batches)
    assert rm.count == allx.numel()
    assert rm.mean == pytest.approx(allx.mean().item(), rel=1e-12)
    assert rm.var == pytest.approx(allx.var().item(), rel=1e-9)
    assert rm.variance(unbiased=False) == pytest.approx(allx.var(unbiased=False).item(), rel=1e-9)


def test_running_moments_masked_update_and_state_dict():
    # masked update of [[1, 2, junk], [3, junk, junk]] == update of [1, 2, 3]
    rm = RunningMoments()
    x = t([[1.0, 2.0, math.nan], [3.0, 1e9, -1e9]])
    rm.update(x, mask=t([[1, 1, 0], [1, 0, 0]]))
    assert (rm.count, rm.mean, rm.var) == pytest.approx((3, 2.0, 1.0))
    resumed = RunningMoments()
    resumed.load_state_dict(rm.state_dict())
    rm.update(t([10.0, 20.0]))
    resumed.update(t([10.0, 20.0]))
    assert resumed.state_dict() == rm.state_dict()
    # empty mask: nothing changes
    assert rm.update(t([5.0]), mask=t([0.0])) == (0.0, 0.0)
    assert resumed.state_dict() == rm.state_dict()
