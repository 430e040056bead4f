"""benchmarks/compare_study.py: the determinism check of issue 14 tells a printed difference from one below
the printed precision, and ignores where and how long a run took."""
import copy
import json
from pathlib import Path

import pytest

from benchmarks.compare_study import largest_differences, main, printed

STORED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "study" / "smol-cpu-reddit.results.json"


@pytest.fixture()
def results() -> dict:
    return json.loads(STORED.read_text())


def _write(tmp_path: Path, name: str, results: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(results))
    return path


def test_a_difference_below_the_printed_digits_is_equal_in_print_but_measured(tmp_path, results):
    second = copy.deepcopy(results)
    second["cells"][0]["ppo"]["kl_last"] += 2e-5      # 0.26857 -> 0.26859: still 0.269 printed
    second["cells"][0]["node"] = "another-node"        # where it ran: not a difference
    second["stages"]["wall_s"]["ppo"] = 1.0            # how long it took: not a difference
    assert printed(second) == printed(results)
    worst, where = largest_differences(results, second)["cells"]
    assert worst == pytest.approx(2e-5, rel=1e-6) and where == "cells[0]/ppo/kl_last"
    assert main([str(_write(tmp_path, "a.json", results)), str(_write(tmp_path, "b.json", second))]) == 0


def test_a_printed_difference_fails_the_check(tmp_path, results, capsys):
    second = copy.deepcopy(results)
    second["cells"][0]["ppo"]["kl_last"] += 0.01       # 0.269 -> 0.279
    assert main([str(_write(tmp_path, "a.json", results)), str(_write(tmp_path, "b.json", second))]) == 1
    out = capsys.readouterr().out
    assert "differing: 1" in out and "0.279" in out
