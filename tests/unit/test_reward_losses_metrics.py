"""Reward losses and metrics against hand-computed values."""

import math

import pytest
import torch

from karma_ray.config import ConfigError, load_config
from karma_ray.reward.config import LossConfig, RewardModelConfig
from karma_ray.reward.losses import bradley_terry_loss, regression_loss, reward_loss
from karma_ray.reward.metrics import average_ranks, mse, pair_scores, pairwise_accuracy, pearson, reward_metrics, spearman


def test_bradley_terry_loss_and_margin():
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # mean(-log sigmoid(1), -log sigmoid(0)) = (0.313262 + 0.693147) / 2
    assert float(bradley_terry_loss(c, r)) == pytest.approx((math.log1p(math.exp(-1)) + math.log(2)) / 2, rel=1e-6)
    assert float(bradley_terry_loss(c, r, margin=1.0)) == pytest.approx((math.log(2) + math.log1p(math.exp(1))) / 2, rel=1e-6)


def test_regression_losses():
    s, t = torch.tensor([0.0, 3.0]), torch.tensor([1.0, 0.0])
    assert float(regression_loss(s, t, "mse")) == pytest.approx(5.0)  # (1 + 9) / 2
    assert float(regression_loss(s, t, "huber", 1.0)) == pytest.approx((0.5 + 2.5) / 2)  # 0.5*1^2 ; 3 - 0.5


def test_losses_combine_with_their_weights():
    cfg = LossConfig(regression="mse", regression_weight=2.0, pairwise_weight=0.5)
    parts = reward_loss(cfg, torch.tensor([0.0, 3.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0]), torch.tensor([1.0]))
    assert parts.regression == pytest.approx(5.0) and parts.pairwise == pytest.approx(math.log(2))
    assert float(parts.total) == pytest.approx(2 * 5.0 + 0.5 * math.log(2))
    bt_only = reward_loss(LossConfig(regression="none", pairwise_weight=1.0), chosen=torch.tensor([0.0]), rejected=torch.tensor([0.0]))
    assert bt_only.regression is None and float(bt_only.total) == pytest.approx(math.log(2))


def test_a_config_without_any_loss_is_refused():
    with pytest.raises(ConfigError, match="loss"):
        load_config(RewardModelConfig, None, ["loss.regression=none", "input.variant=meta"])


def test_ranks_and_correlations():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [10, 20, 30, 1000]) < 0.9  # not monotone-invariant
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = [1, 2, 3], y = [1, 3, 2]: rank correlation = 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 1, 1], [1, 2, 3]) is None  # a constant score has no correlation
    assert mse([1, 2], [1, 4]) == 2.0


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy([2, 1, 5], [1, 1, 6]) == pytest.approx((1 + 0.5 + 0) / 3)
    assert pairwise_accuracy([], []) is None
    chosen, rejected, missing = pair_scores(["a", "b", "c"], [0.1, 0.2, 0.3], [("c", "a"), ("a", "b"), ("a", "zz")])
    assert (chosen, rejected, missing) == ([0.3, 0.1], [0.1, 0.2], 1)


def test_reward_metrics_on_a_small_split():
    m = reward_metrics([0.0, 1.0, 2.0], [0.0, 2.0, 1.0], ["a", "b", "c"], [("b", "a"), ("b", "c")])
    assert m["spearman"] == pytest.approx(0.5) and m["mse"] == pytest.approx(2 / 3)
    assert m["pairwise_accuracy"] == pytest.approx(0.5) and m["n_pairs"] == 2 and m["n"] == 3
