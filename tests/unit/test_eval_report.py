"""karma_ray.eval.report on a small synthetic results dict: the files, the numbers as a person
reads them (formatted by hand here), the significance marks, escaping, and the one-model case."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from karma_ray.eval.report import ReportFiles, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRIPT_TASK = "<script>alert(1)</script>"


def _task(task, group, metric, higher_is_better, skipped=None, n_items=200):
    return {"task": task, "group": group, "metric": metric, "higher_is_better": higher_is_better, "n_items": n_items,
            "n_rows": 2 * n_items, "skipped": skipped or {}, "num_fewshot": 0, "description": f"{task} ({metric})"}


def _value(task, group, metric, model, value, low, high, n=200):
    return {"task": task, "group": group, "metric": metric, "model": model, "value": value, "ci_low": low,
            "ci_high": high, "se": (high - low) / 4, "n": n}


def _comparison(candidate, task, group, metric, base, cand, delta, low, high, p, p_holm, test="mcnemar-exact"):
    return {"baseline": "base", "candidate": candidate, "task": task, "group": group, "metric": metric,
            "mean_baseline": base, "mean_candidate": cand, "delta": delta, "ci_low": low, "ci_high": high,
            "test": test, "p_value": p, "p_holm": p_holm, "n": 200}


def synthetic_results() -> dict:
    """Three checkpoints, seven (task, metric) rows: two pragmatics tasks, truthfulqa_mc2, a
    lower-is-better toxicity metric, a karma reward and a no-direction length, and a task whose
    name is markup. sft improves humor significantly; ppo makes toxicity significantly worse."""
    tasks = [
        _task("humor", "pragmatics", "acc", True, skipped={"empty text": 3, "too long": 2}),
        _task("sentiment", "pragmatics", "acc", True),
        _task("truthfulqa_mc2", "factuality", "acc", True, n_items=817),
        _task("rtp", "toxicity", "expected_max_toxicity", False, n_items=100),
        _task("karma_holdout", "karma", "reward", True, n_items=150),
        _task("karma_holdout", "karma", "length", None, n_items=150),
        _task(SCRIPT_TASK, "sycophancy", "acc", True, n_items=50),
    ]
    values = {  # (task, metric) -> model -> (value, low, high)
        ("humor", "acc"): {"base": (0.5123, 0.4431, 0.5809), "sft": (0.5724, 0.5031, 0.6402), "ppo": (0.5501, 0.4811, 0.6189)},
        ("sentiment", "acc"): {"base": (0.7, 0.637, 0.76), "sft": (0.71, 0.65, 0.77), "ppo": (0.695, 0.63, 0.755)},
        ("truthfulqa_mc2", "acc"): {"base": (0.3912, 0.3601, 0.4233), "sft": (0.4105, 0.3788, 0.4421),
                                    "ppo": (0.4002, 0.3689, 0.4315)},
        ("rtp", "expected_max_toxicity"): {"base": (0.2014, 0.1702, 0.2331), "sft": (0.1951, 0.1644, 0.2263),
                                           "ppo": (0.2514, 0.2197, 0.2846)},
        ("karma_holdout", "reward"): {"base": (-0.3125, -0.4102, -0.2188), "sft": (0.1049, 0.0121, 0.1987),
                                      "ppo": (0.4016, 0.3051, 0.4988)},
        ("karma_holdout", "length"): {"base": (143.27, 139.81, 146.64), "sft": (163.5, 158.9, 168.06), "ppo": (151.0, 146.2, 155.9)},
        (SCRIPT_TASK, "acc"): {"base": (0.5, 0.36, 0.64), "sft": (0.52, 0.38, 0.66), "ppo": (0.5, 0.36, 0.64)},
    }
    groups = {(t["task"], t["metric"]): t["group"] for t in tasks}
    results = [_value(task, groups[(task, metric)], metric, model, *est)
               for (task, metric), per_model in values.items() for model, est in per_model.items()]
    comparisons = [
        _comparison("sft", "humor", "pragmatics", "acc", 0.5123, 0.5724, 0.0601, 0.0212, 0.0993, 0.0008, 0.0048),
        _comparison("sft", "sentiment", "pragmatics", "acc", 0.7, 0.71, 0.01, -0.02, 0.04, 0.04, 0.16),  # raw p < .05 only
        _comparison("sft", "truthfulqa_mc2", "factuality", "acc", 0.3912, 0.4105, 0.0193, -0.002, 0.04, 0.06, 0.18),
        _comparison("sft", "rtp", "toxicity", "expected_max_toxicity", 0.2014, 0.1951, -0.0063, -0.02, 0.008, 0.3, 0.6,
                    "paired-permutation"),
        _comparison("sft", "karma_holdout", "karma", "reward", -0.3125, 0.1049, 0.4174, 0.31, 0.52, 0.0125, 0.05,
                    "paired-permutation"),  # p_holm exactly 0.05: not significant
        _comparison("sft", "karma_holdout", "karma", "length", 143.27, 163.5, 20.23, 14.6, 25.9, 0.0002, 0.0012,
                    "paired-permutation"),  # significant but without a direction: gray
        _comparison("sft", SCRIPT_TASK, "sycophancy", "acc", 0.5, 0.52, 0.02, -0.06, 0.1, 0.7, 0.7),
        _comparison("ppo", "humor", "pragmatics", "acc", 0.5123, 0.5501, 0.0378, -0.01, 0.085, 0.11, 0.44),
        _comparison("ppo", "rtp", "toxicity", "expected_max_toxicity", 0.2014, 0.2514, 0.05, 0.031, 0.0688, 1e-05, 7e-05,
                    "paired-permutation"),  # toxicity up: a significant regression
        _comparison("ppo", "karma_holdout", "karma", "reward", -0.3125, 0.4016, 0.7141, 0.6, 0.83, 1e-05, 8e-05,
                    "paired-permutation"),
    ]
    return {
        "karma_eval": 1, "seed": 0, "confidence": 0.95, "n_resamples": 10000, "created": "2026-12-02T05:00:00Z",
        "models": [{"name": "base", "path": "packaged:smollm2-135m"}, {"name": "sft", "path": "runs/sft/model"},
                   {"name": "ppo", "path": "runs/<ppo>/model"}],
        "baseline": "base", "tasks": tasks, "results": results, "comparisons": comparisons,
        "failures": [{"task": "persona", "model": "ppo", "error": "RuntimeError: <boom> & 'quotes'\n  at line 3"}],
    }


# The marks the tables must show, by (candidate, "task|metric"): exactly the rows with p_holm < 0.05.
EXPECTED_MARKS = {
    ("sft", "humor|acc"): "**",
    ("sft", "karma_holdout|length"): "**",
    ("ppo", "rtp|expected_max_toxicity"): "***",
    ("ppo", "karma_holdout|reward"): "***",
}
DELTA_ROW = re.compile(r"<tr class='delta-row (\w+)' data-candidate='([^']*)' data-key='([^']*)'>(.*?)</tr>", re.S)


def _delta_rows(page: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(candidate, key) -> (verdict class, significance mark) of every row of the deltas tables."""
    out = {}
    for css, candidate, key, cells in DELTA_ROW.findall(page):
        mark = re.search(r"<td class='sig [a-z]+'>([^<]*)</td>", cells)
        assert mark is not None, cells
        out[(candidate, key)] = (css, mark.group(1))
    return out


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    try:
        from PIL import Image
    except ImportError:  # matplotlib can read it back as well
        import matplotlib.image

        height, width = matplotlib.image.imread(path).shape[:2]
    else:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
    assert width >= 400 and height >= 300, (path, width, height)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[ReportFiles, str, str]:
    files = write_report(synthetic_results(), tmp_path_factory.mktemp("report"))
    return files, files.html.read_text(encoding="utf-8"), files.markdown.read_text(encoding="utf-8")


def test_the_report_writes_both_documents_and_valid_pngs(report):
    files, _, markdown = report
    assert files.html.name == "report.html" and files.markdown.name == "report.md"
    assert files.html.parent == files.markdown.parent
    assert {p.name for p in files.plots} == {"bars.png", "deltas.png", "pragmatics_vs_factuality.png"}
    for plot in files.plots:
        assert plot.parent == files.html.parent
        _assert_png(plot)
        assert f"]({plot.name})" in markdown  # linked by relative path
        assert f"src='{plot.name}'" in files.html.read_text(encoding="utf-8")


def test_the_html_shows_every_model_and_every_interval_as_formatted_by_hand(report):
    _, page, markdown = report
    for model in ("base", "sft", "ppo", "packaged:smollm2-135m", "runs/sft/model"):
        assert model in page and model in markdown
    by_hand = ["0.512 [0.443, 0.581]", "0.572 [0.503, 0.640]", "0.550 [0.481, 0.619]",  # humor
               "0.700 [0.637, 0.760]", "0.391 [0.360, 0.423]", "0.251 [0.220, 0.285]",
               "-0.312 [-0.410, -0.219]", "0.105 [0.012, 0.199]",  # a negative reward
               "143.3 [139.8, 146.6]", "163.5 [158.9, 168.1]",  # lengths: one decimal
               "+0.060 [+0.021, +0.099]", "+0.050 [+0.031, +0.069]", "+20.2 [+14.6, +25.9]"]  # deltas
    for text in by_hand:
        assert text in page, text
        assert text in markdown, text
    assert "n=200" in page
    assert "95% CI" in page
    assert "Holm-corrected across the 7 tasks of this comparison" in page
    assert "Holm-corrected across the 3 tasks of this comparison" in page  # ppo has three comparisons
    # humor skips 5 items, the reasons in a tooltip and a footnote
    assert "title='empty text: 3; too long: 2'" in page and "(a) humor: empty text: 3; too long: 2" in page


def test_marks_appear_exactly_on_the_rows_with_holm_p_below_005_and_colors_follow_the_direction(report):
    _, page, markdown = report
    rows = _delta_rows(page)
    assert len(rows) == 10
    assert {key: mark for key, (_, mark) in rows.items() if mark} == EXPECTED_MARKS
    assert rows[("sft", "humor|acc")][0] == "better"  # accuracy up
    assert rows[("ppo", "rtp|expected_max_toxicity")][0] == "worse"  # toxicity up, lower is better
    assert rows[("ppo", "karma_holdout|reward")][0] == "better"
    assert rows[("sft", "rtp|expected_max_toxicity")][0] == "neutral"  # lower, but not significant
    assert rows[("sft", "karma_holdout|length")][0] == "neutral"  # significant, but no direction
    assert rows[("sft", "karma_holdout|reward")] == ("neutral", "")  # p_holm == 0.05 is not below it
    assert rows[("sft", "sentiment|acc")] == ("neutral", "")  # raw p < 0.05 only
    md_rows = [line for line in markdown.splitlines() if line.startswith("| ") and ("mcnemar" in line or "permutation" in line)]
    assert len(md_rows) == 10
    assert sorted(cells.split(" | ")[-2] for cells in md_rows if "*" in cells) == sorted(EXPECTED_MARKS.values())


def test_strings_from_the_results_are_escaped(report):
    _, page, markdown = report
    assert "<script>" not in page and "<script>" not in markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "runs/&lt;ppo&gt;/model" in page
    assert "<pre>RuntimeError: &lt;boom&gt; &amp; &#x27;quotes&#x27;\n  at line 3</pre>" in page
    assert "RuntimeError: <boom> & 'quotes'" in markdown  # inside a code fence, where markdown shows it as is


def test_one_model_gives_no_deltas_and_no_scatter(tmp_path):
    three = synthetic_results()
    first = write_report(three, tmp_path)
    assert (tmp_path / "deltas.png").exists()
    one = copy.deepcopy(three)
    one["models"] = one["models"][:1]
    one["baseline"] = None
    one["results"] = [r for r in one["results"] if r["model"] == "base"]
    one["comparisons"], one["failures"] = [], []
    files = write_report(one, tmp_path)  # into the same folder: the old deltas.png must not linger
    assert files.html == first.html
    assert [p.name for p in files.plots] == ["bars.png"]
    _assert_png(files.plots[0])
    assert not (tmp_path / "deltas.png").exists() and not (tmp_path / "pragmatics_vs_factuality.png").exists()
    page, markdown = files.html.read_text(encoding="utf-8"), files.markdown.read_text(encoding="utf-8")
    assert "delta-row" not in page and "Differences to the baseline" not in page and "Failures" not in page
    assert "Differences to the baseline" not in markdown and "pragmatics_vs_factuality" not in markdown
    assert "0.512 [0.443, 0.581]" in page and "sft" not in page


def test_a_report_without_tasks_metadata_or_plots_to_draw_still_renders(tmp_path):
    results = {"karma_eval": 1, "models": [{"name": "m", "path": "p"}], "baseline": None,
               "results": [_value("mmlu", "knowledge", "acc", "m", 0.25, 0.2, 0.3)]}
    files = write_report(results, tmp_path / "nested" / "out")
    page = files.html.read_text(encoding="utf-8")
    assert "mmlu" in page and "0.250 [0.200, 0.300]" in page
    assert [p.name for p in files.plots] == ["bars.png"]


def test_warnings_get_their_own_section_escaped(tmp_path):
    results = synthetic_results()
    results["warnings"] = ["m gave the same answer (' <No>') to all 100 items of persona: ..."]
    files = write_report(results, tmp_path)
    page, markdown = files.html.read_text(encoding="utf-8"), files.markdown.read_text(encoding="utf-8")
    assert "<h2>Warnings</h2>" in page and "(&#x27; &lt;No&gt;&#x27;)" in page
    assert "## Warnings" in markdown and "<No>" not in page
