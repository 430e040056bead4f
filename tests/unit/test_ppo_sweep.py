"""`karma sweep-ppo`: the grid and its checks (before Ray), the objective, the results table."""

import csv
import math

import pytest

from karma_ray.config import ConfigError, load_config
from karma_ray.rlhf.sweep import SweepPPOConfig, SweepPPOTrial, objective_value, plan_trials, render_summary, rounds, write_results

CONFIG = "configs/ppo/sweep_kl_tiny.yaml"


def test_the_grid_is_every_combination_applied_to_the_base_config():
    cfg = load_config(SweepPPOConfig, CONFIG, ["search.space={algo.kl_coef: [0.01, 0.1], policy.lr: [1.0e-4, 1.0e-3, 1.0e-2]}"])
    trials = plan_trials(cfg)
    assert len(trials) == 6
    assert [(t.ppo.algo.kl_coef, t.ppo.policy.lr) for t in trials] == [
        (0.01, 1e-4), (0.01, 1e-3), (0.01, 1e-2), (0.1, 1e-4), (0.1, 1e-3), (0.1, 1e-2)]
    assert trials[0].params == {"algo.kl_coef": 0.01, "policy.lr": 1e-4}
    # the sweep's own overrides reach every trial; the rest is the base config's
    assert {t.ppo.run.iterations for t in trials} == {8} and {t.ppo.eval.every_iterations for t in trials} == {2}
    assert rounds(trials[0].ppo) == 4


@pytest.mark.parametrize("override, message", [
    ("search.space={algo.kl_coeff: [0.1]}", "kl_coeff"),                       # a key PPO does not have
    ("search.space={algo.kl_coef: [-1.0]}", "kl_coef"),                         # a value PPO refuses
    ("search.space={algo.kl_coef: []}", "non-empty"),
    ("search.objective={eval/mmlu/acc: 1.0}", "does not run"),                 # a task the live eval does not run
    ("search.objective={eval/truthfulqa_mc2/acc: 1.0}", "eval/truthfulqa_mc2/mc2"),  # the wrong metric of a task
    ("ppo_overrides=[eval.every_iterations=0]", "in-training evaluation"),
    ("search.reduction_factor=1", "reduction_factor"),
])
def test_a_sweep_that_cannot_run_fails_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SweepPPOConfig, CONFIG, [override])


def test_objective_is_the_weighted_sum_and_nan_when_a_metric_is_missing():
    weights = {"eval/humor/acc": 1.0, "eval/truthfulqa_mc2/mc2": 0.5, "kl": -0.1}
    m = {"eval/humor/acc": 0.6, "eval/truthfulqa_mc2/mc2": 0.3, "kl": 2.0, "reward_mean": 9.0}
    assert objective_value(m, weights) == pytest.approx(0.6 + 0.15 - 0.2)
    assert math.isnan(objective_value({"eval/humor/acc": 0.6, "kl": 2.0}, weights))
    assert math.isnan(objective_value({**m, "kl": float("nan")}, weights))


def test_results_table_marks_the_trials_asha_stopped(tmp_path):
    cfg = load_config(SweepPPOConfig, CONFIG)
    trials = [
        SweepPPOTrial("t0", {"algo.kl_coef": 0.002}, [0.5, 0.6, 0.7, 0.8], 4, "", None),
        SweepPPOTrial("t1", {"algo.kl_coef": 0.02}, [0.4], 4, "", None),          # stopped at the first rung
        SweepPPOTrial("t2", {"algo.kl_coef": 0.2}, [0.45], 4, "RuntimeError('x')", None),  # failed: not "stopped early"
    ]
    assert [t.stopped_early for t in trials] == [False, True, False]
    rows = list(csv.DictReader(open(write_results(tmp_path, trials, ["algo.kl_coef"], list(cfg.search.objective)))))
    assert [r["trial"] for r in rows] == ["t0", "t1", "t2"]
    assert [r["rounds"] for r in rows] == ["4", "1", "1"]
    assert [r["stopped_early"] for r in rows] == ["False", "True", "False"]
    assert rows[0]["objective_round4"] == "0.8" and rows[1]["objective_round2"] == ""
    text = render_summary(trials, trials[0], cfg)
    assert "Best: t0 {'algo.kl_coef': 0.002} (objective 0.8000 after 4 rounds)" in text
    assert "| t1 | 0.02 | 1/4 | yes |" in text
