"""The report of `karma eval`: results.json turned into something a person reads rather than parses.

    files = write_report(results, "runs/eval/report")   # ReportFiles(markdown, html, plots)

Written into the output folder:

- `report.html`: self-contained (inline CSS, no scripts); the PNGs are referenced by file name, so
  the folder can be moved or zipped as a whole.
- `report.md`: the same content as GitHub markdown (tables, images linked by relative path).
- `bars.png`: one small panel per (task, metric), one bar per model with its confidence interval.
- `deltas.png`: forest plot of every candidate's differences to the baseline, with intervals.
- `pragmatics_vs_factuality.png`: one point per model, when >= 2 models and both groups are present.

The input is the results dict of `karma eval` (schema `karma_eval: 1`): the models, the baseline,
per-(task, metric) task metadata, per-model estimates with intervals, paired comparisons of each
candidate against the baseline (raw and Holm-adjusted p-values) and the failures. Every string in
it may come from a user (task names, model paths, error messages), so all of them are escaped.

matplotlib is imported inside the plotting functions only: importing this module stays cheap.
"""

from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

MARKDOWN_NAME = "report.md"
HTML_NAME = "report.html"
BARS_PLOT = "bars.png"
DELTAS_PLOT = "deltas.png"
SCATTER_PLOT = "pragmatics_vs_factuality.png"
PLOT_DPI = 120
SIGNIFICANCE_LEVEL = 0.05

# The order in which the groups of `karma eval` are shown; groups not listed follow in order of appearance.
GROUP_ORDER = ("pragmatics", "factuality", "knowledge", "sycophancy", "toxicity", "karma")
PRAGMATICS, FACTUALITY, PREFERRED_FACTUALITY_TASK = "pragmatics", "factuality", "truthfulqa_mc2"

# One colour per model, the same in every plot (matplotlib's tab10, colour-blind tolerable).
MODEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# Verdict colours: the same green / red / gray in the HTML tables and in the forest plot.
BETTER_COLOR, WORSE_COLOR, NEUTRAL_COLOR = "#1a7f37", "#cf222e", "#6e7781"


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    plots: tuple[Path, ...]


# ----------------------------------------------------------------------------------------------
# Reading the results into rows


@dataclass(frozen=True)
class TaskRow:
    """One (task, metric): one row of the tables, one panel of the bar plot."""

    task: str
    metric: str
    group: str
    higher_is_better: bool | None
    n_items: int | None
    skipped: dict[str, int]
    num_fewshot: int | None
    n_rows: int | None
    description: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.metric)

    @property
    def skipped_total(self) -> int:
        return sum(int(count) for count in self.skipped.values() if _is_number(count))


@dataclass(frozen=True)
class Verdict:
    """How one comparison row reads: its CSS class, its word in the tables, its colour in the plot."""

    css: str
    word: str
    color: str


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _direction_of(value: Any) -> bool | None:
    # JSON gives true/false/null; anything else (a missing key) is treated as "no direction".
    return value if isinstance(value, bool) else None


def _group_rank(groups_in_order: Sequence[str]) -> dict[str, int]:
    known = {group: i for i, group in enumerate(GROUP_ORDER)}
    rank: dict[str, int] = {}
    for group in groups_in_order:
        if group not in rank:
            rank[group] = known.get(group, len(GROUP_ORDER) + len(rank))
    return rank


def task_rows(results: dict) -> list[TaskRow]:
    """The (task, metric) rows, grouped in GROUP_ORDER, within a group in the order of `tasks`.

    A (task, metric) that has results but no `tasks` entry still gets a row (with what the results
    say about it), so no number is silently left out of the report."""
    rows: dict[tuple[str, str], TaskRow] = {}
    for meta in results.get("tasks") or []:
        key = (str(meta.get("task", "?")), str(meta.get("metric", "?")))
        if key in rows:
            continue
        skipped = meta.get("skipped") or {}
        rows[key] = TaskRow(
            task=key[0], metric=key[1], group=str(meta.get("group") or "other"),
            higher_is_better=_direction_of(meta.get("higher_is_better")),
            n_items=meta.get("n_items") if _is_number(meta.get("n_items")) else None,
            skipped={str(reason): count for reason, count in skipped.items()} if isinstance(skipped, dict) else {},
            num_fewshot=meta.get("num_fewshot") if _is_number(meta.get("num_fewshot")) else None,
            n_rows=meta.get("n_rows") if _is_number(meta.get("n_rows")) else None,
            description=str(meta.get("description") or ""),
        )
    for entry in list(results.get("results") or []) + list(results.get("comparisons") or []):
        key = (str(entry.get("task", "?")), str(entry.get("metric", "?")))
        if key not in rows:
            rows[key] = TaskRow(key[0], key[1], str(entry.get("group") or "other"), None, None, {}, None, None, "")
    ordered = list(rows.values())
    rank = _group_rank([row.group for row in ordered])
    # sorted() is stable: within a group the rows keep the order of `tasks`.
    return sorted(ordered, key=lambda row: rank[row.group])


def model_names(results: dict) -> list[str]:
    names = [str(model.get("name")) for model in results.get("models") or []]
    for entry in results.get("results") or []:  # a model with results but no `models` entry still gets a column
        if str(entry.get("model")) not in names:
            names.append(str(entry.get("model")))
    return names


def _results_by_key(results: dict) -> dict[tuple[str, str, str], dict]:
    return {(str(r.get("task")), str(r.get("metric")), str(r.get("model"))): r for r in results.get("results") or []}


def _comparisons_by_candidate(results: dict) -> dict[tuple[str, str], dict[tuple[str, str], dict]]:
    """(baseline, candidate) -> (task, metric) -> comparison, candidates in order of appearance."""
    out: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
    for c in results.get("comparisons") or []:
        pair = (str(c.get("baseline")), str(c.get("candidate")))
        out.setdefault(pair, {})[(str(c.get("task")), str(c.get("metric")))] = c
    return out


def _failed_cells(results: dict) -> set[tuple[str, str]]:
    return {(str(f.get("task")), str(f.get("model"))) for f in results.get("failures") or []}


# ----------------------------------------------------------------------------------------------
# Formatting numbers and verdicts (shared by the HTML, the markdown and the plots)


def _decimals(*values: Any) -> int:
    # Three decimals suit the [0, 1] metrics (accuracy, toxicity); a length of 143.2 tokens does
    # not need them, and "143.217 [139.804, 146.630]" only makes the column wider.
    largest = max((abs(v) for v in values if _is_number(v)), default=0.0)
    return 3 if largest < 100 else 1 if largest < 10_000 else 0


def _fixed(x: float, decimals: int, signed: bool = False) -> str:
    if round(x, decimals) == 0:
        x = 0.0  # no "-0.000"
    return f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"


def format_estimate(value: Any, low: Any = None, high: Any = None, *, signed: bool = False,
                    decimals: int | None = None) -> str:
    """'0.512 [0.443, 0.581]'; signed (for differences): '+0.040 [-0.010, +0.090]'; '—' without a value.
    `decimals` defaults to what the numbers' own size calls for (see _decimals)."""
    if not _is_number(value):
        return "—"
    if decimals is None:
        decimals = _decimals(value, low, high)
    text = _fixed(value, decimals, signed)
    if _is_number(low) and _is_number(high):
        text += f" [{_fixed(low, decimals, signed)}, {_fixed(high, decimals, signed)}]"
    return text


def format_p(p: Any) -> str:
    if not _is_number(p):
        return "—"
    # Below 0.001 the digits say nothing more (a permutation test with 10,000 resamples cannot
    # resolve them; 0.0e+00 from an underflow would read as certainty), and *** says it already.
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def significance_mark(p_holm: Any) -> str:
    if not _is_number(p_holm):
        return ""
    return "***" if p_holm < 0.001 else "**" if p_holm < 0.01 else "*" if p_holm < SIGNIFICANCE_LEVEL else ""


def verdict(comparison: dict, higher_is_better: bool | None) -> Verdict:
    delta, p_holm = comparison.get("delta"), comparison.get("p_holm")
    if higher_is_better is None:
        return Verdict("neutral", "no direction", NEUTRAL_COLOR)
    if not (_is_number(p_holm) and p_holm < SIGNIFICANCE_LEVEL) or not _is_number(delta) or delta == 0:
        return Verdict("neutral", "not significant", NEUTRAL_COLOR)
    if (delta > 0) == higher_is_better:
        return Verdict("better", "better", BETTER_COLOR)
    return Verdict("worse", "worse", WORSE_COLOR)


def direction_arrow(higher_is_better: bool | None) -> str:
    return "↑" if higher_is_better is True else "↓" if higher_is_better is False else "·"


def _labelled(text: str, higher_is_better: bool | None) -> str:
    # In a plot label a lone "·" after a metric looks like a stray mark: no direction, no sign.
    return f"{text} {direction_arrow(higher_is_better)}" if higher_is_better is not None else text


def direction_words(higher_is_better: bool | None) -> str:
    return ("higher is better" if higher_is_better is True else
            "lower is better" if higher_is_better is False else "no direction")


def _percent(confidence: Any) -> str:
    return f"{confidence * 100:g}%" if _is_number(confidence) else "?"


# ----------------------------------------------------------------------------------------------
# Plots


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on the machines that run `karma eval`
    from matplotlib.figure import Figure

    # A Figure without pyplot: no global figure registry to leak figures into across many reports.
    return Figure(figsize=(width, height), dpi=PLOT_DPI, layout="constrained")


def _model_color(models: Sequence[str], model: str) -> str:
    return MODEL_COLORS[models.index(model) % len(MODEL_COLORS)] if model in models else NEUTRAL_COLOR


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False)) or text


def _error_bar(value: float, low: Any, high: Any) -> tuple[float, float]:
    # matplotlib wants distances from the point; an interval that misses the point (it should not) is clipped.
    if not (_is_number(low) and _is_number(high)):
        return (0.0, 0.0)
    return (max(0.0, value - low), max(0.0, high - value))


def plot_bars(rows: Sequence[TaskRow], models: Sequence[str], by_key: dict, confidence: Any, path: Path,
              failed: set[tuple[str, str]] = frozenset()) -> Path:
    """Small multiples: one panel per (task, metric), one bar per model with its interval."""
    from matplotlib.transforms import blended_transform_factory

    # A task with several metrics (rtp, karma_holdout) would give several panels of one title.
    metrics_per_task: dict[str, int] = {}
    for row in rows:
        metrics_per_task[row.task] = metrics_per_task.get(row.task, 0) + 1
    n_panels = len(rows)
    n_cols = min(n_panels, 2 if n_panels <= 4 else 3 if n_panels <= 9 else 4 if n_panels <= 16 else 5)
    n_rows = math.ceil(n_panels / n_cols)
    # Model names under the bars: turned when they would not fit side by side in a panel, and then
    # only under the lowest panel of each column (with a colour legend below): thirty panels that
    # each repeat six turned names are mostly names.
    turn_labels = len(models) * max((len(m) for m in models), default=1) > 24
    names_in_every_panel = not turn_labels or n_rows == 1
    # Values turned upright when more than four would stand side by side over the bars.
    turn_values = len(models) > 4
    fig = _figure(3.4 * n_cols, 2.7 * n_rows + 0.6 + (0.4 if not names_in_every_panel else 0))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for index, (ax, row) in enumerate(zip(axes.flat, rows)):
        xs, heights, errors, colors = [], [], [[], []], []
        for i, model in enumerate(models):
            r = by_key.get((row.task, row.metric, model))
            if r is None or not _is_number(r.get("value")):
                # Where the bar would be, low in the panel (x in data, y in axes coordinates).
                ax.text(i, 0.04, "failed" if (row.task, model) in failed else "n/a", ha="center", va="bottom",
                        fontsize=9, color=WORSE_COLOR if (row.task, model) in failed else NEUTRAL_COLOR,
                        rotation=90 if turn_values else 0,
                        transform=blended_transform_factory(ax.transData, ax.transAxes))
                continue
            low, high = _error_bar(r["value"], r.get("ci_low"), r.get("ci_high"))
            xs.append(i), heights.append(r["value"]), colors.append(_model_color(models, model))
            errors[0].append(low), errors[1].append(high)
        ax.bar(xs, heights, color=colors, yerr=errors, capsize=4 if len(models) <= 6 else 2,
               error_kw={"elinewidth": 1.2, "ecolor": "#333333"})
        tops = [h + e for h, e in zip(heights, errors[1])]
        bottoms = [h - e for h, e in zip(heights, errors[0])]
        upper, lower = max([0.0] + tops), min([0.0] + bottoms)
        span = max(upper - lower, 1e-12)
        pad = 0.03 * span
        # The value beyond the end of each bar's interval (above a positive bar, below a negative
        # one): the bar shows the size, the number is what gets quoted.
        for x, h, top, bottom in zip(xs, heights, tops, bottoms):
            outwards = h >= 0
            ax.text(x, top + pad if outwards else bottom - pad, format_estimate(h), ha="center",
                    va="bottom" if outwards else "top", fontsize=8.5, rotation=90 if turn_values else 0)
        headroom = (0.32 if turn_values else 0.16) * span
        ax.set_ylim(lower - (headroom if min(heights, default=0) < 0 else 0), upper + (headroom if upper > 0 else pad))
        if lower < 0:
            ax.axhline(0, color="#333333", linewidth=0.8)
        ax.set_xlim(-0.6, len(models) - 0.4)  # the same bar positions in every panel, missing bars included
        lowest_in_column = index + n_cols >= n_panels
        if names_in_every_panel or lowest_in_column:
            ax.set_xticks(range(len(models)), models, rotation=30 if turn_labels else 0,
                          ha="right" if turn_labels else "center", rotation_mode="anchor", fontsize=9.5)
        else:
            ax.set_xticks(range(len(models)), [""] * len(models))
        title = f"{row.task} · {row.metric}" if metrics_per_task[row.task] > 1 else row.task
        ax.set_title(_wrap(title, 34), fontsize=11)
        ax.set_ylabel(_labelled(row.metric, row.higher_is_better), fontsize=10)
        ax.tick_params(axis="y", labelsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    if not names_in_every_panel:
        from matplotlib.patches import Patch

        fig.legend([Patch(color=_model_color(models, m)) for m in models], models, loc="outside lower center",
                   ncols=min(len(models), 6), fontsize=10, frameon=False)
    for ax in list(axes.flat)[n_panels:]:
        ax.set_visible(False)
    fig.suptitle(f"Values per task with {_percent(confidence)} confidence intervals "
                 "(↑ higher is better, ↓ lower is better, · no direction)", fontsize=12)
    fig.savefig(path, dpi=PLOT_DPI)
    return path


def _delta_scale(row: TaskRow, comparisons: Iterable[dict]) -> str:
    """The x axis a row of the forest plot shares: all metrics on a 0..1 scale share one (a delta
    of 0.04 in accuracy and one in toxicity read alike); any other metric gets its own, so a
    difference of 20 tokens in length does not squash the accuracy intervals to dots."""
    means = [c.get(k) for c in comparisons for k in ("mean_baseline", "mean_candidate")]
    if means and all(_is_number(m) and 0 <= m <= 1 for m in means):
        return "0–1 scale"
    return row.metric


def plot_deltas(rows: Sequence[TaskRow], pairs: dict[tuple[str, str], dict[tuple[str, str], dict]],
                models: Sequence[str], confidence: Any, path: Path) -> Path:
    """Forest plot: one column per candidate, one line per (task, metric), the difference to the
    baseline with its interval against 0; panels of rows that share a scale."""
    compared = [row for row in rows if any(row.key in by_row for by_row in pairs.values())]
    scales: dict[str, list[TaskRow]] = {}
    for row in compared:
        scales.setdefault(_delta_scale(row, [by_row[row.key] for by_row in pairs.values() if row.key in by_row]), []).append(row)
    label_width = max(len(f"{row.task} · {row.metric} ↑") for row in compared)
    # Sized so that it is shown near its own size in a ~1200 px page: text scaled down to fit unreadable.
    fig = _figure(0.5 + 0.085 * min(label_width, 45) + 3.0 * len(pairs),
                  0.9 + sum(0.36 * len(scale_rows) + 0.8 for scale_rows in scales.values()))
    axes = fig.subplots(len(scales), len(pairs), squeeze=False, sharex="row", sharey="row",
                        gridspec_kw={"height_ratios": [len(scale_rows) + 1.5 for scale_rows in scales.values()]})
    for scale_index, (scale, scale_rows) in enumerate(scales.items()):
        for pair_index, ((baseline, candidate), by_row) in enumerate(pairs.items()):
            ax = axes[scale_index][pair_index]
            for y, row in enumerate(scale_rows):
                c = by_row.get(row.key)
                if c is None or not _is_number(c.get("delta")):
                    ax.text(0, y, "no comparison", ha="center", va="center", fontsize=9, color=NEUTRAL_COLOR,
                            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
                    continue
                v = verdict(c, row.higher_is_better)
                significant = bool(significance_mark(c.get("p_holm")))
                low, high = _error_bar(c["delta"], c.get("ci_low"), c.get("ci_high"))
                ax.errorbar([c["delta"]], [y], xerr=[[low], [high]], fmt="o", color=v.color,
                            markerfacecolor=v.color if significant else "white", markersize=6, capsize=3,
                            elinewidth=1.6 if significant else 1.0)
                if significant:
                    # The mark beside the interval's right end, as in the table.
                    ax.annotate(significance_mark(c.get("p_holm")), (c["delta"] + high, y), xytext=(4, -1),
                                textcoords="offset points", va="center", fontsize=10, color=v.color, fontweight="bold")
            ax.axvline(0, color="#333333", linewidth=0.9)
            ax.set_yticks(range(len(scale_rows)), [_labelled(f"{row.task} · {row.metric}", row.higher_is_better)
                                                   for row in scale_rows], fontsize=10)
            ax.set_ylim(len(scale_rows) - 0.5, -0.5)  # first row on top, as in the table
            ax.margins(x=0.15)  # room for the significance marks
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(axis="x", labelsize=9)
            ax.set_xlabel(_wrap(f"Δ {candidate} − {baseline} ({scale})", 55), fontsize=9.5)
            if scale_index == 0:
                ax.set_title(f"{candidate} vs {baseline}", fontsize=11.5)
    fig.suptitle(_wrap(f"Differences to the baseline, {_percent(confidence)} intervals. Filled point and * : "
                       "Holm p < 0.05; green better, red worse, gray not significant or no direction",
                       40 + 35 * len(pairs)), fontsize=10.5)
    fig.savefig(path, dpi=PLOT_DPI)
    return path


@dataclass(frozen=True)
class ScatterAxis:
    """One axis of the pragmatics-vs-factuality plot: per model a value and, where one row stands
    behind it, that row's interval."""

    label: str
    values: dict[str, float]
    intervals: dict[str, tuple[Any, Any]]


def _primary_rows(rows: Sequence[TaskRow], group: str) -> list[TaskRow]:
    # A task's primary metric is the first one listed for it (rtp lists expected_max_toxicity first).
    seen: set[str] = set()
    out = []
    for row in rows:
        if row.group == group and row.task not in seen:
            seen.add(row.task)
            out.append(row)
    return out


def _mean_axis(rows: Sequence[TaskRow], models: Sequence[str], by_key: dict) -> ScatterAxis | None:
    """The mean over `rows` per model, over the rows that every model has a value for (a mean over
    different tasks per model would not compare models)."""
    def value(row: TaskRow, model: str) -> Any:
        r = by_key.get((row.task, row.metric, model))
        return r.get("value") if r else None

    common = [row for row in rows if all(_is_number(value(row, model)) for model in models)]
    if not common:
        return None
    values = {model: sum(value(row, model) for row in common) / len(common) for model in models}
    intervals: dict[str, tuple[Any, Any]] = {}
    if len(common) == 1:  # one row: its interval is the point's interval
        row = common[0]
        intervals = {m: (by_key[(row.task, row.metric, m)].get("ci_low"), by_key[(row.task, row.metric, m)].get("ci_high"))
                     for m in models}
        label = f"{row.task} {row.metric}"
    elif len({row.metric for row in common}) == 1:
        label = f"mean {common[0].metric} of {', '.join(row.task for row in common)}"
    else:
        label = f"mean of {', '.join(f'{row.task} {row.metric}' for row in common)}"
    return ScatterAxis(label, values, intervals)


def scatter_axes(rows: Sequence[TaskRow], models: Sequence[str], by_key: dict) -> tuple[ScatterAxis, ScatterAxis] | None:
    """(x, y) of the pragmatics-vs-factuality plot, or None when it cannot be drawn."""
    if len(models) < 2:
        return None
    x = _mean_axis(_primary_rows(rows, PRAGMATICS), models, by_key)
    preferred = [row for row in _primary_rows(rows, FACTUALITY) if row.task == PREFERRED_FACTUALITY_TASK]
    y = _mean_axis(preferred, models, by_key) or _mean_axis(_primary_rows(rows, FACTUALITY), models, by_key)
    if x is None or y is None:
        return None
    return x, y


def plot_scatter(x: ScatterAxis, y: ScatterAxis, models: Sequence[str], confidence: Any, path: Path) -> Path:
    fig = _figure(7.0, 5.2)
    ax = fig.subplots()
    x_middle = (min(x.values.values()) + max(x.values.values())) / 2
    for i, model in enumerate(models):
        xv, yv = x.values[model], y.values[model]
        xerr = [[e] for e in _error_bar(xv, *x.intervals.get(model, (None, None)))]
        yerr = [[e] for e in _error_bar(yv, *y.intervals.get(model, (None, None)))]
        ax.errorbar([xv], [yv], xerr=xerr, yerr=yerr, fmt="o", color=_model_color(models, model), markersize=8, capsize=4)
        # Labels point inwards (a name right of the rightmost point leaves the axes) and alternate
        # above and below, so that the names of two close models do not overprint.
        inwards = 1 if xv <= x_middle else -1
        ax.annotate(model, (xv, yv), xytext=(8 * inwards, 8 if i % 2 == 0 else -14), textcoords="offset points",
                    ha="left" if inwards > 0 else "right", fontsize=10,
                    color=_model_color(models, model), fontweight="bold",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.margins(0.2)
    ax.set_xlabel(_wrap(f"pragmatics ↑: {x.label}", 70), fontsize=10)
    ax.set_ylabel(_wrap(f"factuality ↑: {y.label}", 45), fontsize=10)
    ax.grid(alpha=0.3)
    notes = [note for note in (
        f"error bars: {_percent(confidence)} CI" if (x.intervals or y.intervals) else "",
        "" if x.intervals else "no interval on x (a mean of several tasks)",
        "" if y.intervals else "no interval on y (a mean of several tasks)") if note]
    ax.set_title("Pragmatics vs factuality per model" + ("\n" + "; ".join(notes) if notes else ""), fontsize=10.5)
    fig.savefig(path, dpi=PLOT_DPI)
    return path


# ----------------------------------------------------------------------------------------------
# The report's content, once, rendered to HTML and markdown


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _md(value: Any) -> str:
    # Markdown renderers pass inline HTML through, so user strings are HTML-escaped here too; a
    # pipe would end a table cell and a newline a table row.
    return html.escape(str(value), quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _fence(text: str) -> str:
    # A code fence longer than any run of backticks in the text, so an error message cannot close it.
    longest = max((len(run) for run in text.split("\n") for run in _backtick_runs(run)), default=0)
    return "`" * max(3, longest + 1)


def _backtick_runs(line: str) -> list[str]:
    runs, current = [], ""
    for ch in line:
        if ch == "`":
            current += ch
        elif current:
            runs.append(current)
            current = ""
    return runs + ([current] if current else [])


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _letter(index: int) -> str:
    # a, b, ..., z, aa, ab, ...: footnote marks that cannot be mistaken for numbers.
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def _skipped_note(row: TaskRow) -> str:
    reasons = [f"{reason}: {count}" for reason, count in row.skipped.items() if _is_number(count) and count]
    return "; ".join(reasons)


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 24px auto;
       max-width: 1240px; padding: 0 20px; line-height: 1.45; font-size: 15px; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 20px; margin-top: 34px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 16px; margin-top: 22px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.task { white-space: nowrap; }
/* With many checkpoints the table scrolls sideways: the task names stay in view. */
.scroll td.task, .scroll th.task { position: sticky; left: 0; background: #fff; z-index: 1; }
.scroll th.task { background: #f6f8fa; }
tr.group th span { position: sticky; left: 9px; }
tr.group th { background: #eaeef2; font-size: 13px; text-transform: uppercase; letter-spacing: 0.04em; }
.n { color: #6e7781; font-size: 12px; display: block; }
.meta td:first-child { font-weight: 600; white-space: nowrap; }
.dir { color: #1f2328; white-space: nowrap; text-align: center; font-size: 16px; font-weight: 700; }
.fn { color: #57606a; font-size: 12px; }
abbr { text-decoration: underline dotted; cursor: help; }
td.better { color: #1a7f37; background: #dafbe1; font-weight: 600; }
td.worse { color: #cf222e; background: #ffebe9; font-weight: 600; }
td.neutral { color: #6e7781; }
td.sig { font-weight: 700; text-align: center; }
td.failed { color: #cf222e; }
.note { color: #57606a; font-size: 13.5px; }
figure { margin: 14px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 13.5px; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; white-space: pre-wrap; word-break: break-word; font-size: 13px; }
code { font-size: 13px; }
"""


class _Report:
    """Builds both documents side by side, section by section, so the markdown mirrors the HTML."""

    def __init__(self, results: dict, plots: dict[str, Path]):
        self.results = results
        self.plots = plots
        self.rows = task_rows(results)
        self.models = model_names(results)
        self.by_key = _results_by_key(results)
        self.pairs = _comparisons_by_candidate(results)
        self.failed = _failed_cells(results)
        self.confidence = results.get("confidence")
        self.baseline = results.get("baseline")
        self.html: list[str] = []
        self.md: list[str] = []

    # -- sections

    def header(self) -> None:
        r = self.results
        title = "karma eval report"
        n_failures = len(r.get("failures") or [])
        summary = (f"{_count(len(self.rows), 'task/metric row')} × {_count(len(self.models), 'checkpoint')}"
                   + (f", {_count(n_failures, 'failed task run')} (see Failures)" if n_failures else "") + ".")
        self.html += [f"<h1>{_e(title)}</h1>", f"<p class='note'>{_e(summary)}</p>"]
        self.md += [f"# {title}", "", summary, ""]
        meta = [("created", r.get("created", "—")), ("seed", r.get("seed", "—")),
                ("confidence level", _percent(self.confidence)),
                ("bootstrap resamples", f"{r['n_resamples']:,}" if _is_number(r.get("n_resamples")) else "—"),
                ("baseline", self.baseline if self.baseline is not None else "— (no comparisons)"),
                ("schema", f"karma_eval {r.get('karma_eval', '?')}")]
        self.html.append("<table class='meta'>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in meta)
                         + "</table>")
        self.md += ["| | |", "|---|---|"] + [f"| **{_md(k)}** | {_md(v)} |" for k, v in meta] + [""]

        self.html.append("<h3>Models</h3><table><tr><th>model</th><th>path</th><th>role</th></tr>")
        self.md += ["### Models", "", "| model | path | role |", "|---|---|---|"]
        paths = {str(m.get("name")): m.get("path", "") for m in r.get("models") or []}
        for model in self.models:
            role = "baseline" if model == self.baseline else "candidate" if self.baseline is not None else "—"
            self.html.append(f"<tr><td><b>{_e(model)}</b></td><td><code>{_e(paths.get(model, ''))}</code></td>"
                             f"<td>{_e(role)}</td></tr>")
            self.md.append(f"| **{_md(model)}** | {_md(paths.get(model, ''))} | {_md(role)} |")
        self.html.append("</table>")
        self.md.append("")

    def values_table(self) -> None:
        ci = _percent(self.confidence)
        intro = (f"Each cell: value [{ci} CI] and n, the items scored for that model. "
                 "↑ higher is better, ↓ lower is better, · no direction (reported, not judged).")
        self.html += ["<h2>Results</h2>", f"<p class='note'>{_e(intro)}</p>", "<div class='scroll'><table class='values'>"]
        self.md += ["## Results", "", intro, ""]
        head = ["task", "metric", "better", "items", "skipped"] + [
            f"{m} (baseline)" if m == self.baseline else m for m in self.models]
        paths = {str(m.get("name")): str(m.get("path", "")) for m in self.results.get("models") or []}
        self.html.append("<tr><th class='task'>task</th>" + "".join(f"<th>{_e(h)}</th>" for h in head[1:5]) + "".join(
            f"<th class='num' title='{_e(paths.get(m, ''))}'>{_e(h)}</th>" for m, h in zip(self.models, head[5:])) + "</tr>")
        self.md += ["| " + " | ".join(_md(h) for h in head) + " |",
                    "|" + "---|" * 2 + ":-:|" + "--:|" * (2 + len(self.models))]
        # Footnotes of the skipped items, one per task and reasons (rtp's two metrics skip the same
        # prompts); lettered, since a digit after a count reads as an exponent ("2²").
        notes: dict[tuple[str, str], str] = {}
        group = None
        for row in self.rows:
            if row.group != group:
                group = row.group
                self.html.append(f"<tr class='group'><th colspan='{len(head)}'><span>{_e(group)}</span></th></tr>")
                self.md.append(f"| **{_md(group)}** |" + " |" * (len(head) - 1))
            note = _skipped_note(row)
            if note:
                letter = notes.setdefault((row.task, note), _letter(len(notes)))
            skipped_html = (f"<abbr title='{_e(note)}'>{row.skipped_total:,}</abbr> <span class='fn'>({letter})</span>"
                            if note else "0")
            skipped_md = f"{row.skipped_total:,} ({letter})" if note else "0"
            items = f"{row.n_items:,}" if row.n_items is not None else "—"
            task_title = f" title='{_e(row.description)}'" if row.description else ""
            cells_html, cells_md = [], []
            # One precision per row, so that the models' numbers line up and compare digit by digit.
            decimals = _decimals(*(r.get(k) for m in self.models if (r := self.by_key.get((row.task, row.metric, m)))
                                   for k in ("value", "ci_low", "ci_high")))
            for model in self.models:
                r = self.by_key.get((row.task, row.metric, model))
                if r is None or not _is_number(r.get("value")):
                    failed = (row.task, model) in self.failed
                    cells_html.append(f"<td class='num{' failed' if failed else ''}'>{'failed' if failed else '—'}</td>")
                    cells_md.append("failed" if failed else "—")
                    continue
                est = format_estimate(r["value"], r.get("ci_low"), r.get("ci_high"), decimals=decimals)
                n = f"n={r['n']:,}" if _is_number(r.get("n")) else ""
                cells_html.append(f"<td class='num'>{_e(est)}<span class='n'>{_e(n)}</span></td>")
                cells_md.append(f"{_md(est)} ({n})" if n else _md(est))
            self.html.append(
                f"<tr><td class='task'{task_title}>{_e(row.task)}</td><td>{_e(row.metric)}</td>"
                f"<td class='dir' title='{_e(direction_words(row.higher_is_better))}'>{direction_arrow(row.higher_is_better)}</td>"
                f"<td class='num'>{items}</td><td class='num'>{skipped_html}</td>" + "".join(cells_html) + "</tr>")
            self.md.append(f"| {_md(row.task)} | {_md(row.metric)} | {direction_arrow(row.higher_is_better)} | {items} | "
                           f"{skipped_md} | " + " | ".join(cells_md) + " |")
        self.html.append("</table></div>")
        self.md.append("")
        if notes:
            self.html.append("<p class='note'>Skipped items: " + "; ".join(
                f"({letter}) {_e(task)}: {_e(note)}" for (task, note), letter in notes.items()) + ".</p>")
            self.md += ["Skipped items: " + "; ".join(
                f"({letter}) {_md(task)}: {_md(note)}" for (task, note), letter in notes.items()) + ".", ""]
        if BARS_PLOT in self.plots:
            self.figure(BARS_PLOT, f"Values per task and model with {ci} confidence intervals.")

    def deltas_tables(self) -> None:
        if not self.pairs:
            return
        ci = _percent(self.confidence)
        self.html.append("<h2>Differences to the baseline</h2>")
        self.md += ["## Differences to the baseline", ""]
        rows_by_key = {row.key: row for row in self.rows}
        for (baseline, candidate), by_row in self.pairs.items():
            ordered = [row for row in self.rows if row.key in by_row]
            counts = {"better": 0, "worse": 0}
            self.html += [f"<h3>{_e(candidate)} vs {_e(baseline)}</h3>", "<div class='scroll'><table class='deltas'>"]
            self.md += [f"### {_md(candidate)} vs {_md(baseline)}", ""]
            head = ["task", "metric", "better", baseline, candidate, f"Δ [{ci} CI]", "test", "p", "p (Holm)", "sig.", "verdict"]
            self.html.append("<tr>" + "".join(f"<th class='{'task' if i == 0 else 'num' if i >= 3 else ''}'>{_e(h)}</th>"
                                              for i, h in enumerate(head)) + "</tr>")
            self.md += ["| " + " | ".join(_md(h) for h in head) + " |", "|---|---|:-:|" + "--:|" * 6 + ":-:|---|"]
            for row in ordered:
                c = by_row[row.key]
                v = verdict(c, rows_by_key[row.key].higher_is_better)
                counts[v.css] = counts.get(v.css, 0) + 1
                # The difference in the precision of the values it is the difference of (a length's in tenths).
                decimals = _decimals(c.get("mean_baseline"), c.get("mean_candidate"), c.get("ci_low"), c.get("ci_high"))
                delta = format_estimate(c.get("delta"), c.get("ci_low"), c.get("ci_high"), signed=True, decimals=decimals)
                mark = significance_mark(c.get("p_holm"))
                cells = [format_estimate(c.get("mean_baseline"), decimals=decimals),
                         format_estimate(c.get("mean_candidate"), decimals=decimals), delta,
                         str(c.get("test") or "—"), format_p(c.get("p_value")), format_p(c.get("p_holm"))]
                self.html.append(
                    f"<tr class='delta-row {v.css}' data-candidate='{_e(candidate)}' data-key='{_e(row.task)}|{_e(row.metric)}'>"
                    f"<td class='task'>{_e(row.task)}</td><td>{_e(row.metric)}</td>"
                    f"<td class='dir' title='{_e(direction_words(row.higher_is_better))}'>{direction_arrow(row.higher_is_better)}</td>"
                    f"<td class='num'>{_e(cells[0])}</td><td class='num'>{_e(cells[1])}</td>"
                    f"<td class='num {v.css}'>{_e(cells[2])}</td><td>{_e(cells[3])}</td>"
                    f"<td class='num'>{_e(cells[4])}</td><td class='num'>{_e(cells[5])}</td>"
                    f"<td class='sig {v.css}'>{mark}</td><td class='{v.css}'>{_e(v.word)}</td></tr>")
                self.md.append(f"| {_md(row.task)} | {_md(row.metric)} | {direction_arrow(row.higher_is_better)} | "
                               + " | ".join(_md(cell) for cell in cells) + f" | {mark} | "
                               + (f"**{v.word}**" if v.css != "neutral" else v.word) + " |")
            self.html.append("</table></div>")
            summary = (f"{candidate} against {baseline}: {counts['better']} significantly better, "
                       f"{counts['worse']} significantly worse, of {len(ordered)} task/metric rows.")
            holm_sentence = (f"p-values are Holm-corrected across the {len(ordered)} tasks of this comparison "
                             f"({candidate} vs {baseline}); “p” is the uncorrected p-value of the paired test. "
                             "Marks: * p (Holm) < 0.05, ** < 0.01, *** < 0.001. Green: significantly better, "
                             "red: significantly worse, gray: not significant or a metric without a direction.")
            self.html += [f"<p><b>{_e(summary)}</b></p>", f"<p>{_e(holm_sentence)}</p>"]
            self.md += ["", f"**{_md(summary)}**", "", _md(holm_sentence), ""]
        if DELTAS_PLOT in self.plots:
            self.figure(DELTAS_PLOT, f"Each candidate's differences to the baseline with {ci} intervals; "
                                     "filled points and marks are significant after Holm's correction.")

    def scatter(self) -> None:
        if SCATTER_PLOT not in self.plots:
            return
        self.html.append("<h2>Pragmatics vs factuality</h2>")
        self.md += ["## Pragmatics vs factuality", ""]
        self.figure(SCATTER_PLOT, "One point per model: the mean of its pragmatics tasks against its factuality "
                                  "(the axis labels name the tasks).")

    def warnings(self) -> None:
        warnings = self.results.get("warnings") or []
        if not warnings:
            return
        self.html += ["<h2>Warnings</h2>", "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>"]
        self.md += ["## Warnings", "", *[f"- {_md(w)}" for w in warnings], ""]

    def failures(self) -> None:
        failures = self.results.get("failures") or []
        if not failures:
            return
        intro = f"{_count(len(failures), 'task run')} failed; the cells of a failed run read “failed” above."
        self.html += ["<h2>Failures</h2>", f"<p class='note'>{_e(intro)}</p>"]
        self.md += ["## Failures", "", intro, ""]
        for f in failures:
            error = str(f.get("error", ""))
            self.html += [f"<h3>{_e(f.get('task', '?'))} — {_e(f.get('model', '?'))}</h3>", f"<pre>{_e(error)}</pre>"]
            fence = _fence(error)
            self.md += [f"### {_md(f.get('task', '?'))} — {_md(f.get('model', '?'))}", "", fence, error, fence, ""]

    def task_details(self) -> None:
        if not any(row.description or row.num_fewshot is not None or row.n_rows is not None for row in self.rows):
            return
        head = ["task", "metric", "group", "few-shot", "items", "scored rows", "description"]
        self.html += ["<h2>Tasks</h2>", "<div class='scroll'><table class='tasks'><tr>"
                      + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
        self.md += ["## Tasks", "", "| " + " | ".join(head) + " |", "|---|---|---|--:|--:|--:|---|"]
        for row in self.rows:
            cells = [row.task, row.metric, row.group, "—" if row.num_fewshot is None else str(row.num_fewshot),
                     "—" if row.n_items is None else f"{row.n_items:,}", "—" if row.n_rows is None else f"{row.n_rows:,}",
                     row.description]
            self.html.append("<tr>" + "".join(f"<td{' class=num' if 3 <= i <= 5 else ''}>{_e(c)}</td>"
                                              for i, c in enumerate(cells)) + "</tr>")
            self.md.append("| " + " | ".join(_md(c) for c in cells) + " |")
        self.html.append("</table></div>")
        self.md.append("")

    def figure(self, name: str, caption: str) -> None:
        # Linked to itself: a wide plot scaled down to the page opens at full size on a click.
        self.html.append(f"<figure><a href='{_e(name)}'><img src='{_e(name)}' alt='{_e(caption)}'></a>"
                         f"<figcaption>{_e(caption)} (Click for full size.)</figcaption></figure>")
        self.md += [f"![{_md(caption)}]({name})", "", f"*{_md(caption)}*", ""]

    def render(self) -> tuple[str, str]:
        self.header()
        self.values_table()
        self.warnings()
        self.deltas_tables()
        self.scatter()
        self.failures()
        self.task_details()
        page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                "<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<title>karma eval report</title><style>{CSS}</style></head><body>\n"
                + "\n".join(self.html) + "\n</body></html>\n")
        return page, "\n".join(self.md).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------


def write_plots(results: dict, output: Path) -> dict[str, Path]:
    """The PNGs that the results allow, by file name."""
    rows, models, by_key = task_rows(results), model_names(results), _results_by_key(results)
    pairs, confidence = _comparisons_by_candidate(results), results.get("confidence")
    plots: dict[str, Path] = {}
    if rows and models and by_key:
        plots[BARS_PLOT] = plot_bars(rows, models, by_key, confidence, output / BARS_PLOT, _failed_cells(results))
    if pairs and any(row.key in by_row for row in rows for by_row in pairs.values()):
        plots[DELTAS_PLOT] = plot_deltas(rows, pairs, models, confidence, output / DELTAS_PLOT)
    axes = scatter_axes(rows, models, by_key)
    if axes is not None:
        plots[SCATTER_PLOT] = plot_scatter(*axes, models, confidence, output / SCATTER_PLOT)
    return plots


def write_report(results: dict, output: str | Path) -> ReportFiles:
    """Write report.md, report.html and the PNGs into `output`; returns their paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    plots = write_plots(results, output)
    # A plot of an earlier report into the same folder that this one does not draw (one model now,
    # so no deltas) would sit beside the report as if it belonged to it.
    for name in (BARS_PLOT, DELTAS_PLOT, SCATTER_PLOT):
        if name not in plots:
            (output / name).unlink(missing_ok=True)
    page, markdown = _Report(results, plots).render()
    html_path, markdown_path = output / HTML_NAME, output / MARKDOWN_NAME
    html_path.write_text(page, encoding="utf-8")
    markdown_path.write_text(markdown, encoding="utf-8")
    return ReportFiles(markdown=markdown_path, html=html_path, plots=tuple(plots.values()))


__all__ = ["ReportFiles", "TaskRow", "format_estimate", "format_p", "significance_mark", "task_rows", "verdict",
           "write_report"]
