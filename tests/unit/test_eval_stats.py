"""karma_ray.eval.stats against hand-computed values."""

import math

import numpy as np
import pytest

from karma_ray.eval.stats import holm, mcnemar_exact, mean_ci, paired_comparison, paired_permutation_p


def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_pairs():
    # 8 items only a gets right, 2 only b: p = 2 * P(X <= 2 | n=10, 1/2) = 2 * (1 + 10 + 45) / 1024
    a = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    b = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    p, discordant = mcnemar_exact(a, b)
    assert discordant == (8, 2)
    assert p == pytest.approx(112 / 1024, rel=1e-12)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == (1.0, (0, 0))  # identical answers: no evidence


def test_paired_permutation_enumerates_all_sign_flips_when_it_can():
    # differences [1, 2, 3]: of the 8 sign patterns only +++ and --- reach |mean| >= 2 -> p = 2/8
    assert paired_permutation_p([0, 0, 0], [1, 2, 3]) == pytest.approx(0.25, abs=1e-12)
    # [1, 1, 1, 1, -1], observed sum 3: a flipped pattern's sum is that of 5 fair +-1 signs, and
    # |sum| >= 3 when 0, 1, 4 or 5 of them are +1: 1 + 5 + 5 + 1 = 12 of 32 patterns
    assert paired_permutation_p([0] * 5, [1, 1, 1, 1, -1]) == pytest.approx(12 / 32, abs=1e-12)


def test_holm_multiplies_by_rank_and_keeps_the_order_monotone():
    # sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.2]) == [0.2]
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_the_bootstrap_interval_has_the_normal_width_and_repeats_with_its_seed():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, size=400).astype(float)
    est = mean_ci(x, seed=3)
    normal_half_width = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert est.low < x.mean() < est.high
    assert (est.high - est.low) / 2 == pytest.approx(normal_half_width, rel=0.1)
    assert est.se == pytest.approx(x.std(ddof=1) / math.sqrt(len(x)), rel=0.1)
    assert mean_ci(x, seed=3) == est  # seeded: the same interval
    assert mean_ci([0.7] * 5).low == 0.7 == mean_ci([0.7] * 5).high  # no spread, no interval


def test_paired_comparison_picks_the_test_by_the_scores():
    a, b = [1, 1, 0, 0, 1, 0] * 10, [1, 1, 1, 0, 1, 1] * 10
    binary = paired_comparison(a, b, seed=0)
    assert binary.test == "mcnemar-exact" and binary.discordant == (0, 20)
    assert binary.difference.value == pytest.approx(20 / 60)
    assert binary.p_value == pytest.approx(2 * 0.5 ** 20)
    assert binary.difference.low > 0  # b is better on every discordant item
    graded = paired_comparison([0.1, 0.4, 0.5, 0.2], [0.3, 0.5, 0.9, 0.1], seed=0)
    assert graded.test == "paired-permutation" and graded.mean_b - graded.mean_a == pytest.approx(0.15)
    with pytest.raises(ValueError, match="same items"):
        paired_comparison([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([1.0, float("nan")])


def _paired_binary(rng, n, p_a, p_b):
    """Per-item outcomes of two checkpoints on the same items: item difficulty shared (paired), then
    each model right with its own probability on top of it."""
    difficulty = rng.uniform(-0.3, 0.3, n)
    a = (rng.uniform(size=n) < np.clip(p_a + difficulty, 0, 1)).astype(float)
    b = (rng.uniform(size=n) < np.clip(p_b + difficulty, 0, 1)).astype(float)
    return a, b


def test_the_paired_tests_find_a_planted_difference():
    rng = np.random.default_rng(7)
    rejected_binary = rejected_continuous = covered = 0
    for rep in range(40):
        a, b = _paired_binary(rng, 300, 0.50, 0.65)  # a planted +0.15 accuracy
        cmp = paired_comparison(a, b, n_resamples=2000, seed=rep)
        assert cmp.test == "mcnemar-exact"
        rejected_binary += cmp.p_value < 0.05
        x = rng.normal(size=200)
        y = x + 0.25 + 0.5 * rng.normal(size=200)  # a planted +0.25 shift of a continuous score
        c = paired_comparison(x, y, n_resamples=2000, seed=rep)
        assert c.test == "paired-permutation"
        rejected_continuous += c.p_value < 0.05
        covered += c.difference.low < 0.25 < c.difference.high
    # power: McNemar ~0.97 at this effect and size (normal approximation), permutation ~1
    assert rejected_binary >= 34 and rejected_continuous >= 38
    assert covered >= 34  # the 95% interval of the difference holds the planted shift (expected 38 of 40)


def test_on_identical_models_the_tests_reject_at_about_their_nominal_rate():
    """Two checkpoints that are the same model evaluated with independent noise (sampling, like the
    toxicity and karma tasks): the null holds, so p < 0.05 should happen in about 5% of repeats.
    The exact McNemar test is conservative (discrete), so its rate may sit below 5%."""
    rng = np.random.default_rng(11)
    reps = 400
    binary = continuous = 0
    for rep in range(reps):
        a, b = _paired_binary(rng, 200, 0.6, 0.6)
        binary += paired_comparison(a, b, n_resamples=500, seed=rep).p_value < 0.05
        x = rng.normal(size=60)
        continuous += paired_comparison(x, x + rng.normal(size=60), n_resamples=500, seed=rep).p_value < 0.05
    # 95% binomial range of a 5% rate over 400 repeats is about [2.9%, 7.4%]
    assert 0.01 <= binary / reps <= 0.075, binary / reps
    assert 0.025 <= continuous / reps <= 0.08, continuous / reps
