import pytest

from karma_ray.config import PairConfig, SplitConfig
from karma_ray.data.labels import percentile_ranks, prefers, split_for_thread


@pytest.mark.parametrize(
    "scores, expected",
    [
        ([7], [0.5]),
        ([1, 3], [0.0, 1.0]),
        ([5, 5], [0.5, 0.5]),
        ([2, 1, 2], [0.75, 0.0, 0.75]),  # the 2s: 1 below + 0.5 * 1 tie, over 2 others
        ([10, -1, 4, 4, 0], [1.0, 0.0, 0.625, 0.625, 0.25]),
    ],
)
def test_percentile_ranks_by_hand(scores, expected):
    assert percentile_ranks(scores) == pytest.approx(expected)


def test_split_is_deterministic_salted_and_close_to_its_fractions():
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.2, salt="s")
    splits = [split_for_thread(f"t3_{i:x}", cfg) for i in range(20000)]
    assert splits == [split_for_thread(f"t3_{i:x}", cfg) for i in range(20000)]
    assert splits.count("val") / 20000 == pytest.approx(0.1, abs=0.01)
    assert splits.count("test") / 20000 == pytest.approx(0.2, abs=0.01)
    other = [split_for_thread(f"t3_{i:x}", SplitConfig(val_fraction=0.1, test_fraction=0.2, salt="t")) for i in range(20000)]
    assert other != splits


def test_shp_rule_needs_later_and_higher_by_ratio_and_margin():
    cfg = PairConfig(shp_rule=True, min_score_ratio=2.0, min_score_margin=1)
    assert prefers(10, 200, 4, 100, cfg)  # later, 10 >= 2 * 4
    assert not prefers(10, 50, 4, 100, cfg)  # earlier: it had more time
    assert not prefers(7, 200, 4, 100, cfg)  # 7 < 2 * 4
    assert not prefers(4, 200, 4, 100, cfg)  # no margin
    assert prefers(1, 200, -5, 100, cfg)  # ratio only applies to two positive scores
    loose = PairConfig(shp_rule=False, min_score_ratio=1.0, min_score_margin=3)
    assert prefers(10, 50, 4, 100, loose) and not prefers(6, 50, 4, 100, loose)
