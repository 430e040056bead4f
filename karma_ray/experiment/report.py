"""The experiment's report: the paper's questions, each answered with its uncertainty.

    results.json   rm (each variant's karma prediction, with CIs), cells (PPO per cell), downstream
                   (each policy's delta against the base per task, CI, Holm p), lineage, stages
    report.md / report.html, headline.png (RM karma accuracy vs downstream change), training.png (reward
    and gold per PPO iteration, with noise bands), gold.png (proxy
    reward vs gold quality, synthetic corpora), length.png (reward and downstream deltas vs length)

Reads only the stage folders' own outputs (rm/best.csv + metrics, ppo/*/metrics.jsonl, eval/results.json),
so a report rebuilt from a rerun that skipped every stage is the same report.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from karma_ray.eval.report import format_estimate, format_p, significance_mark

HEADLINE_PLOT, TRAINING_PLOT, GOLD_PLOT, LENGTH_PLOT = "headline.png", "training.png", "gold.png", "length.png"
CONDITION_COLORS = {"exposure": "#1f77b4", "base": "#d62728"}
CONTROLS = ("random", "constant")


def fisher_ci(r: float | None, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    """95% CI of a Spearman/Pearson correlation by the Fisher transform (se = 1/sqrt(n-3))."""
    if r is None or not math.isfinite(r) or n < 4 or abs(r) >= 1:
        return None, None
    centre, half = math.atanh(r), z / math.sqrt(n - 3)
    return math.tanh(centre - half), math.tanh(centre + half)


def wilson_ci(p: float | None, n: int) -> tuple[float | None, float | None]:
    """95% Wilson interval of a proportion from n trials (scipy's binomtest)."""
    if p is None or not math.isfinite(p) or n < 1:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(round(p * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def rm_rows(rm_dir: Path) -> dict[str, dict]:
    """Each variant's best reward model: test Spearman and pairwise accuracy with CIs (held-out threads)."""
    rows: dict[str, dict] = {}
    best_csv = rm_dir / "best.csv"
    if not best_csv.is_file() or not best_csv.read_text().strip():
        return rows
    with best_csv.open() as fh:
        for row in csv.DictReader(fh):
            v = row["variant"]
            metrics = json.loads((rm_dir / "best" / f"{v}_metrics.json").read_text())["test"]
            sp, acc = metrics.get("spearman"), metrics.get("pairwise_accuracy")
            rows[v] = {"spearman": sp, "spearman_ci": fisher_ci(sp, metrics["n"]), "pairwise_accuracy": acc,
                       "pairwise_accuracy_ci": wilson_ci(acc, metrics["n_pairs"]), "n": metrics["n"], "n_pairs": metrics["n_pairs"],
                       "model": row["model"]}
    return rows


def item_scores(items_path: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """eval/items.parquet -> {(model, task, metric): {item_id: value}} (missing file: empty)."""
    if not items_path.is_file():
        return {}
    import pyarrow.parquet as pq

    scores: dict[tuple[str, str, str], dict[str, float]] = {}
    for row in pq.read_table(items_path, columns=["model", "task", "metric", "item_id", "value"]).to_pylist():
        scores.setdefault((row["model"], row["task"], row["metric"]), {})[row["item_id"]] = row["value"]
    return scores


def _seed_mean(scores: dict, models: Sequence[str], task: str, metric: str, items: Sequence[str]) -> list[float]:
    return [sum(scores[(m, task, metric)][i] for m in models) / len(models) for i in items]


def pooled_comparisons(scores: dict, arms: dict[tuple[str, str], list[str]], metrics: Sequence[tuple[str, str]], *,
                       n_resamples: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The study's arms (variant x condition), each its seeds' policies averaged item by item.

    pooled: each arm against the base, per task: Δ = mean over items of (seed-mean score - base score),
    paired bootstrap CI and paired test over items, Holm across the arm's tasks; `seed_deltas` are the
    seeds' own Δs (their spread is the seed-to-seed noise the item CI does not include).
    contrasts: two reward variants head to head within a condition (b - a on the same items).
    Only items every model of the comparison was scored on count (n says how many)."""
    from karma_ray.eval.stats import holm, paired_comparison

    def compare(a_models: list[str], b_models: list[str], task: str, metric: str) -> dict | None:
        keys = [(m, task, metric) for m in (*a_models, *b_models)]
        if not all(k in scores for k in keys):
            return None
        items = sorted(set.intersection(*(set(scores[k]) for k in keys)))
        if not items:
            return None
        a, b = _seed_mean(scores, a_models, task, metric, items), _seed_mean(scores, b_models, task, metric, items)
        c = paired_comparison(a, b, n_resamples=n_resamples, seed=seed)
        # each b model's own mean difference on the same items (no resampling: the spread is what is shown)
        own = [sum(scores[(m, task, metric)][i] - ai for i, ai in zip(items, a)) / len(items) for m in b_models]
        return {"task": task, "metric": metric, "delta": c.difference.value, "ci_low": c.difference.low,
                "ci_high": c.difference.high, "p_value": c.p_value, "test": c.test, "n": c.n, "seed_deltas": own}

    def with_holm(rows: list[dict]) -> list[dict]:
        for r, adj in zip(rows, holm([r["p_value"] for r in rows]) if rows else []):
            r["p_holm"] = adj
        return rows

    pooled, contrasts = [], []
    for (variant, condition), models in arms.items():
        rows = []
        for task, metric in metrics:
            r = compare(["base"], models, task, metric)
            if r is not None:
                rows.append({"variant": variant, "condition": condition, "seeds": len(models), **r})
        pooled += with_holm(rows)
    learned = [(v, c) for v, c in arms if v not in CONTROLS]
    for i, (va, ca) in enumerate(learned):
        for vb, cb in learned[i + 1:]:
            if ca != cb:
                continue
            rows = [r for t, m in metrics if (r := compare(arms[(va, ca)], arms[(vb, cb)], t, m)) is not None]
            for r in rows:
                del r["seed_deltas"]  # b's seeds against a's mean: not a seed spread of the contrast
            contrasts += with_holm([{"condition": ca, "a": va, "b": vb, **r} for r in rows])
    return pooled, contrasts


def build_results(plan: Any, outcomes: dict[str, dict], lineage: dict, log: Any) -> dict:
    out = plan.output
    rm = rm_rows(out / "rm")
    eval_path = out / "eval" / "results.json"
    evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() else {"comparisons": [], "results": [], "tasks": []}
    downstream: dict[str, list[dict]] = {}
    for c in evaluation["comparisons"]:
        if c["baseline"] != "base":
            continue
        downstream.setdefault(c["candidate"], []).append(
            {k: c.get(k) for k in ("task", "group", "metric", "delta", "ci_low", "ci_high", "p_value", "p_holm", "test", "n")})
    cells = []
    for cell in plan.cells:
        o = outcomes.get(cell.name, {"summary": {}, "error": "not run"})
        cells.append({"cell": cell.name, "variant": cell.variant, "condition": cell.condition, "seed": cell.seed,
                      "ppo": o.get("summary", {}), "curve": training_curve(out / "ppo" / cell.name / "metrics.jsonl"),
                      "node": o.get("node"), "error": o.get("error", ""),
                      "retries": len(o.get("retried_after", [])), "role_nodes": o.get("role_nodes", []),
                      "rm_spearman": rm.get(cell.variant, {}).get("spearman"),
                      "rm_pairwise_accuracy": rm.get(cell.variant, {}).get("pairwise_accuracy")})
    higher = {(t["task"], t["metric"]): t.get("higher_is_better") for t in evaluation.get("tasks", [])}
    scores = item_scores(out / "eval" / "items.parquet")
    arms: dict[tuple[str, str], list[str]] = {}
    for c in cells:
        if c["cell"] in downstream:
            arms.setdefault((c["variant"], c["condition"]), []).append(c["cell"])
    pooled, contrasts = pooled_comparisons(scores, arms, headline_metrics({"downstream": downstream}), n_resamples=plan.eval.stats.n_resamples,
                                           seed=evaluation.get("seed") or 0)
    return {
        "karma_experiment": 1, "name": plan.cfg.name, "output": str(out),
        "seeds": {"ppo": list(plan.cfg.ppo.seeds), "ppo_constant": list(plan.cfg.ppo.seeds_of("constant")), "eval": evaluation.get("seed"), "corpus": plan.cfg.corpus.synthetic_seed},
        "synthetic": bool(plan.cfg.corpus.synthetic_comments),
        "rm": rm, "cells": cells, "downstream": downstream, "pooled": pooled, "contrasts": contrasts,
        "higher_is_better": {f"{t}/{m}": h for (t, m), h in higher.items()},
        "eval_results": evaluation.get("results", []), "eval_warnings": evaluation.get("warnings", []),
        "eval_report": str(out / "eval" / "report.html"), "lineage": lineage,
        "stages": {"ran": log.ran, "skipped": log.skipped, "wall_s": log.wall_s},
    }


CURVE_KEYS = ("step", "reward_mean", "reward_sem", "gold_mean", "gold_sem", "kl")


def training_curve(metrics_path: Path) -> list[dict]:
    """The iterations of one PPO cell, reduced to what the training plot draws."""
    if not metrics_path.is_file():
        return []
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [{k: r[k] for k in CURVE_KEYS if k in r} for r in rows]


# -- plots -------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def headline_metrics(results: dict) -> list[tuple[str, str]]:
    """(task, metric) pairs every evaluated cell has, karma first, in the eval's task order."""
    seen: list[tuple[str, str]] = []
    for rows in results["downstream"].values():
        for r in rows:
            if (r["task"], r["metric"]) not in seen and r["metric"] != "length":
                seen.append((r["task"], r["metric"]))
    return sorted(seen, key=lambda tm: (tm[0] != "karma", seen.index(tm)))


def _delta(results: dict, cell: str, task: str, metric: str) -> dict | None:
    for r in results["downstream"].get(cell, []):
        if (r["task"], r["metric"]) == (task, metric):
            return r
    return None


def _variant_shapes(cells: Sequence[dict]) -> dict[str, str]:
    """A marker per reward variant, squares for the controls: cells that share a point stay told apart
    by the legend, where labels beside the points would print over each other."""
    shapes, free = {}, iter(["o", "^", "v", "D", "P", "X", "*", "h"])
    for c in cells:
        if c["variant"] not in shapes:
            shapes[c["variant"]] = "s" if c["variant"] in CONTROLS else next(free, "o")
    return shapes


def _point_style(cell: dict, shapes: dict[str, str], first_seed: int) -> dict:
    """errorbar keywords for a cell's point: marker = reward variant, colour = condition, hollow = a later seed."""
    color = CONDITION_COLORS.get(cell["condition"], "#555")
    return {"fmt": shapes[cell["variant"]], "color": color, "mfc": color if cell["seed"] == first_seed else "white",
            "capsize": 3, "alpha": 0.85}


def plot_headline(results: dict, path: Path) -> Path | None:
    """x: the reward model's karma accuracy (test pairwise accuracy); y: its policy's change against the base."""
    metrics = headline_metrics(results)
    cells = [c for c in results["cells"] if c["cell"] in results["downstream"] and c["rm_pairwise_accuracy"] is not None]
    if not metrics or not cells:
        return None
    shapes, first_seed = _variant_shapes(cells), min(c["seed"] for c in cells)
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = _figure(4.2 * cols, 3.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (task, metric) in zip(axes.flat, metrics):
        for c in cells:
            d = _delta(results, c["cell"], task, metric)
            if d is None or d["delta"] is None:
                continue
            x = c["rm_pairwise_accuracy"]
            lo, hi = d["ci_low"], d["ci_high"]
            yerr = [[d["delta"] - lo], [hi - d["delta"]]] if lo is not None and hi is not None else None
            ax.errorbar([x], [d["delta"]], yerr=yerr, **_point_style(c, shapes, first_seed))
        ax.axhline(0, color="#999", lw=0.8)
        arrow = {True: " ↑", False: " ↓"}.get(results["higher_is_better"].get(f"{task}/{metric}"), "")
        ax.set_title(f"{task} {metric}{arrow}", fontsize=9)
        ax.set_xlabel("RM test pairwise accuracy", fontsize=8)
        ax.set_ylabel("Δ vs base (95% CI)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    conditions = {c["condition"] for c in cells}   # the legend names only what the plot shows
    handles = [Line2D([], [], color=col, marker="o", ls="", label=cond) for cond, col in CONDITION_COLORS.items()
               if cond in conditions]
    handles += [Line2D([], [], color="#444", marker=m, ls="", label=v) for v, m in shapes.items()]
    if any(c["seed"] != first_seed for c in cells):
        handles.append(Line2D([], [], color="#444", marker="o", mfc="white", ls="", label="a later seed"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, title="condition, reward", title_fontsize=7)
    fig.suptitle("Does the better karma predictor give the better policy?", fontsize=11)
    fig.savefig(path)
    return path


def plot_training(results: dict, path: Path) -> Path | None:
    """Per cell over its PPO iterations: the batch reward of its own RM and the planted gold text
    quality (synthetic corpora), each with its 95% noise band (1.96 standard errors of the batch
    mean), and the KL to the reference."""
    cells = [c for c in results["cells"] if c.get("curve")]
    if not cells:
        return None
    has_gold = any("gold_mean" in r for c in cells for r in c["curve"])
    panels = [("reward_mean", "reward_sem", "reward of the cell's RM (batch mean, 95% band)")]
    if has_gold:
        panels.append(("gold_mean", "gold_sem", "planted gold text quality (batch mean, 95% band)"))
    panels.append(("kl", None, "KL(policy ‖ reference) per sequence"))
    fig = _figure(4.6 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    for i, c in enumerate(cells):
        color = palette[i % len(palette)]
        style = "--" if c["variant"] in CONTROLS else "-"
        for ax, (key, sem, _) in zip(axes, panels):
            pts = [r for r in c["curve"] if r.get(key) is not None and math.isfinite(r[key])]
            if not pts:
                continue
            xs, ys = [r["step"] for r in pts], [r[key] for r in pts]
            ax.plot(xs, ys, style, color=color, lw=1.4, label=c["cell"])
            if sem is not None:
                half = [1.959964 * r.get(sem, 0.0) if math.isfinite(r.get(sem, float("nan"))) else 0.0 for r in pts]
                ax.fill_between(xs, [y - h for y, h in zip(ys, half)], [y + h for y, h in zip(ys, half)], color=color, alpha=0.15)
    for ax, (_, _, title) in zip(axes, panels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("PPO iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, title="cell (-- control)", title_fontsize=7)
    fig.suptitle("PPO: does the proxy reward rise, and does the gold quality follow?", fontsize=11)
    fig.savefig(path)
    return path


def plot_gold(results: dict, path: Path) -> Path | None:
    """Proxy (the judge RM's reward) against gold text quality, both as deltas against the base."""
    return _cell_scatter(results, path, ("karma", "reward"), ("karma", "gold_quality"),
                         "Δ proxy reward (judge RM) vs base", "Δ gold text quality vs base",
                         "Reward hacking shows as proxy up, gold flat or down")


def _cell_scatter(results: dict, path: Path, x: tuple[str, str], y: tuple[str, str],
                  xlabel: str, ylabel: str, title: str) -> Path | None:
    """One point per cell: its two deltas against the base with both 95% CIs (both are estimates), each
    cell named in the legend."""
    pts = []
    for c in results["cells"]:
        dx, dy = _delta(results, c["cell"], *x), _delta(results, c["cell"], *y)
        if dx and dy and dx["delta"] is not None and dy["delta"] is not None:
            pts.append((c, dx, dy))
    if not pts:
        return None
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    shapes, first_seed = _variant_shapes([c for c, _, _ in pts]), min(c["seed"] for c, _, _ in pts)
    for c, dx, dy in pts:
        ax.errorbar([dx["delta"]], [dy["delta"]], xerr=_err(dx), yerr=_err(dy), label=c["cell"],
                    **_point_style(c, shapes, first_seed))
    fig.legend(loc="outside right upper", fontsize=7, title="cell", title_fontsize=7)
    ax.axhline(0, color="#999", lw=0.8)
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.savefig(path)
    return path


def _err(d: dict) -> list[list[float]]:
    """matplotlib's asymmetric error bar of an estimate's CI (zero width where it has none)."""
    lo, hi = d.get("ci_low"), d.get("ci_high")
    return [[d["delta"] - lo if lo is not None else 0.0], [hi - d["delta"] if hi is not None else 0.0]]


def plot_length(results: dict, path: Path) -> Path | None:
    """Reply length against the judge's reward, both as deltas against the base."""
    return _cell_scatter(results, path, ("karma", "length"), ("karma", "reward"), "Δ reply length (tokens) vs base",
                         "Δ judge reward vs base", "Length bias: does reward follow length?")


# -- tables ------------------------------------------------------------------------------------------------


def _ci(value: Any, ci: Sequence[Any] | None) -> str:
    lo, hi = (ci or (None, None))
    return format_estimate(value, lo, hi)


def _cell_delta(d: dict | None) -> str:
    if d is None:
        return "—"
    return f"{format_estimate(d['delta'], d['ci_low'], d['ci_high'], signed=True)} p={format_p(d.get('p_holm'))}{significance_mark(d.get('p_holm'))}"


def tables(results: dict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, header, rows) of every table, for both renderings."""
    out = []
    rm = results["rm"]
    out.append(("Reward models: karma prediction on held-out threads",
                "Test Spearman (Fisher 95% CI) and pairwise accuracy (Wilson 95% CI). random/constant are the controls.",
                ["variant", "Spearman", "pairwise accuracy", "n", "pairs"],
                [[v, _ci(r["spearman"], r["spearman_ci"]), _ci(r["pairwise_accuracy"], r["pairwise_accuracy_ci"]), f"{r['n']:,}",
                  f"{r['n_pairs']:,}"] for v, r in sorted(rm.items(), key=lambda kv: -(kv[1]["pairwise_accuracy"] or 0))]))
    metrics = headline_metrics(results)
    out.append(("Downstream change against the base policy",
                "Δ = policy − base, paired bootstrap 95% CI; p Holm-corrected across one policy's tasks (* <0.05, ** <0.01, *** <0.001).",
                ["policy", "RM acc", *[f"{t} {m}" for t, m in metrics]],
                [[c["cell"], format_estimate(c["rm_pairwise_accuracy"]), *[_cell_delta(_delta(results, c["cell"], t, m)) for t, m in metrics]]
                 for c in results["cells"] if c["cell"] in results["downstream"]]
                + ([["sft (exposure only)", "—", *[_cell_delta(_delta(results, "sft", t, m)) for t, m in metrics]]]
                   if "sft" in results["downstream"] else [])))
    pooled = results.get("pooled", [])
    if any(r["seeds"] > 1 for r in pooled):
        arms = list(dict.fromkeys((r["variant"], r["condition"], r["seeds"]) for r in pooled))
        out.append(("Downstream change pooled over seeds",
                    "Each arm's seeds averaged item by item, against the base: Δ, paired bootstrap 95% CI over items, Holm p across "
                    "the arm's tasks; in brackets after it, each seed's own Δ (their spread is seed noise the item CI leaves out).",
                    ["reward variant", "condition", "seeds", *[f"{t} {m}" for t, m in metrics]],
                    [[v, cond, str(n), *[_pooled_cell(pooled, v, cond, t, m) for t, m in metrics]] for v, cond, n in arms]))
    contrasts = results.get("contrasts", [])
    if contrasts:
        pairs = list(dict.fromkeys((r["condition"], r["a"], r["b"]) for r in contrasts))
        out.append(("Reward variants head to head",
                    "b − a on the same items, each arm's seeds averaged; paired bootstrap 95% CI, Holm p across tasks.",
                    ["condition", "b − a", *[f"{t} {m}" for t, m in metrics]],
                    [[cond, f"{b} − {a}", *[_cell_delta(next((r for r in contrasts if (r["condition"], r["a"], r["b"], r["task"], r["metric"])
                                                             == (cond, a, b, t, m)), None)) for t, m in metrics]]
                     for cond, a, b in pairs]))
    out.append(("PPO per cell", "Training batches: the reward of the cell's own RM (and the planted gold quality on synthetic corpora)"
                " at the first and last iteration, and the mean ± se of the last quarter of the iterations.",
                ["cell", "iterations", "reward first", "reward last", "reward tail mean ± se", "gold first", "gold tail mean ± se",
                 "KL last", "KL max", "node", "retries", "error"],
                [[c["cell"], str(c["ppo"].get("iterations", "—")), format_estimate(c["ppo"].get("reward_first")),
                  format_estimate(c["ppo"].get("reward_last")), _pm(c["ppo"], "reward_tail"),
                  format_estimate(c["ppo"].get("gold_first")), _pm(c["ppo"], "gold_tail"),
                  format_estimate(c["ppo"].get("kl_last")), format_estimate(c["ppo"].get("kl_max")), c.get("node") or "—",
                  str(c.get("retries", 0)), c["error"][:200] or "—"] for c in results["cells"]]))
    lin = results["lineage"]
    out.append(("Exposure, checked by lineage", lin.get("prompts", ""),
                ["cell", "condition", "start policy saw the corpus", "as the condition says"],
                [[n, c["condition"], "yes" if c["start_saw_corpus"] else "no", "ok" if c["ok"] else "WRONG"]
                 for n, c in lin.get("cells", {}).items()]))
    st = results["stages"]
    out.append(("Stages", f"{len(st['ran'])} run by this call, {len(st['skipped'])} skipped as finished with the same config.",
                ["stage", "this call", "wall s"],
                # the cells run together on Ray Tune: the matrix has one wall time, not one per cell
                [[k, "ran", "in the matrix" if k.startswith("ppo/") else str(st["wall_s"].get(k, ""))] for k in st["ran"]]
                + ([["ppo matrix (the cells run by this call)", "ran", str(st["wall_s"]["ppo"])]] if "ppo" in st["wall_s"] else [])
                + [[k, "skipped (finished)", ""] for k in st["skipped"]]))
    return out


def _pooled_cell(pooled: list[dict], variant: str, condition: str, task: str, metric: str) -> str:
    r = next((r for r in pooled if (r["variant"], r["condition"], r["task"], r["metric"]) == (variant, condition, task, metric)), None)
    if r is None:
        return "—"
    return f"{_cell_delta(r)} ({', '.join(format_estimate(d, signed=True) for d in r['seed_deltas'])})"


def _pm(summary: dict, prefix: str) -> str:
    mean, se = summary.get(f"{prefix}_mean"), summary.get(f"{prefix}_se")
    return f"{format_estimate(mean)} ± {format_estimate(se)}" if mean is not None else "—"


def findings(results: dict) -> list[str]:
    """Plain sentences answering the study's questions from the numbers above (no claim without its test)."""
    lines = []
    rm = {v: r for v, r in results["rm"].items() if v not in CONTROLS and r["pairwise_accuracy"] is not None}
    if rm:
        best = max(rm, key=lambda v: rm[v]["pairwise_accuracy"])
        lines.append(f"Best karma predictor: {best} (test pairwise accuracy {_ci(rm[best]['pairwise_accuracy'], rm[best]['pairwise_accuracy_ci'])}).")
        ranked = {v: r for v, r in rm.items() if r["spearman"] is not None}
        by_rank = max(ranked, key=lambda v: ranked[v]["spearman"]) if ranked else best
        if by_rank != best:
            # The two measures ask different questions: Spearman ranks every held-out reply (the
            # thread and the reply's timing count), pairwise accuracy only siblings that the pair
            # rule kept (with the SHP rule, the later reply won), so timing cannot help there.
            lines.append(f"By Spearman over all held-out replies the best is {by_rank} ({_ci(ranked[by_rank]['spearman'], ranked[by_rank]['spearman_ci'])}, "
                         f"against {best}'s {_ci(rm[best]['spearman'], rm[best]['spearman_ci'])}): the measures disagree.")
    asked = headline_metrics(results)[:1] + [m for m in headline_metrics(results) if m[0].startswith("truthfulqa")][:1]
    for task, metric in asked:
        deltas = [(c["cell"], _delta(results, c["cell"], task, metric)) for c in results["cells"]]
        deltas = [(n, d) for n, d in deltas if d and d["delta"] is not None]
        if deltas:
            n, d = max(deltas, key=lambda nd: nd[1]["delta"])
            falls = sum(1 for _, d2 in deltas if d2["ci_high"] is not None and d2["ci_high"] < 0)
            lines.append(f"{task} {metric}: largest change {n} {_cell_delta(d)}; CI wholly below 0 in {falls} of {len(deltas)} policies.")
    pooled = [r for r in results.get("pooled", []) if r["seeds"] > 1]
    for task, metric in asked:
        rows = [r for r in pooled if (r["task"], r["metric"]) == (task, metric)]
        if rows:
            best = max(rows, key=lambda r: r["delta"])
            falls = sum(1 for r in rows if r["ci_high"] < 0)
            lines.append(f"Pooled over seeds, {task} {metric}: largest change {best['variant']}/{best['condition']} {_cell_delta(best)}; "
                         f"CI wholly below 0 in {falls} of {len(rows)} arms.")
    for r in results.get("contrasts", []):
        if asked and (r["task"], r["metric"]) == asked[0]:
            lines.append(f"{r['b']} − {r['a']} ({r['condition']}), {r['task']} {r['metric']}: {_cell_delta(r)}.")
    gold = proxy_vs_gold(results)
    if gold:
        lines.append(gold)
    failed = [c["cell"] for c in results["cells"] if c["error"]]
    if failed:
        lines.append(f"Failed cells (errors in the PPO table): {', '.join(failed)}.")
    return lines


def proxy_vs_gold(results: dict) -> str | None:
    """On a synthetic corpus: did the planted gold quality follow the proxy (the judge RM's reward)
    in the policies whose proxy rose? A gold CI wholly below 0 there is reward hacking."""
    pairs = [(c["cell"], _delta(results, c["cell"], "karma", "reward"), _delta(results, c["cell"], "karma", "gold_quality"))
             for c in results["cells"]]
    pairs = [(n, r, g) for n, r, g in pairs if r and g and r["delta"] is not None and g["delta"] is not None]
    if not pairs:
        return None  # no gold column: not a synthetic corpus
    rose = [(n, r, g) for n, r, g in pairs if r["ci_low"] is not None and r["ci_low"] > 0]
    if not rose:
        return f"Proxy vs gold: no policy's karma reward rose (CI above 0) in {len(pairs)}; gold quality has nothing to follow."
    up = [n for n, _, g in rose if g["ci_low"] is not None and g["ci_low"] > 0]
    down = [(n, r, g) for n, r, g in rose if g["ci_high"] is not None and g["ci_high"] < 0]
    whose = "the policy whose karma reward rose" if len(rose) == 1 else f"the {len(rose)} policies whose karma reward rose"
    line = (f"Proxy vs gold: of {whose} (CI above 0), {len(up)} also rose in gold quality, "
            f"{len(down)} fell in it (reward hacking), and in {len(rose) - len(up) - len(down)} the gold change is not clear.")
    if down:
        n, r, g = min(down, key=lambda nrg: nrg[2]["delta"])
        line += f" Largest fall: {n}, reward {_cell_delta(r)}, gold {_cell_delta(g)}."
    return line


def _ppo_seeds(results: dict) -> str:
    seeds = results["seeds"]
    constant = seeds.get("ppo_constant", seeds["ppo"])
    return str(seeds["ppo"]) if constant == seeds["ppo"] else f"{seeds['ppo']} (the constant control {constant})"


def render_markdown(results: dict, plots: dict[str, Path]) -> str:
    md = [f"# KARMA experiment: {results['name']}", "",
          f"Seeds: PPO {_ppo_seeds(results)}, evaluation {results['seeds']['eval']}, corpus {results['seeds']['corpus']}. "
          f"Per-task evaluation report: `{results['eval_report']}`.", ""]
    md += ["## Findings", "", *[f"- {line}" for line in findings(results)], ""]
    for name, file in plots.items():
        md += [f"![{name}]({file.name})", ""]
    for title, note, header, rows in tables(results):
        md += [f"## {title}", "", note, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    if results["eval_warnings"]:
        md += ["## Evaluation warnings", "", *[f"- {w}" for w in results["eval_warnings"]], ""]
    return "\n".join(md)


def render_html(results: dict, plots: dict[str, Path]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>KARMA experiment: {e(results['name'])}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}"
             "th{background:#f3f3f3}.note{color:#555;font-size:13px}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}</style></head><body>",
             f"<h1>KARMA experiment: {e(results['name'])}</h1>",
             f"<p class='note'>Seeds: PPO {e(_ppo_seeds(results))}, evaluation {e(str(results['seeds']['eval']))}, corpus "
             f"{e(str(results['seeds']['corpus']))}. Per-task evaluation: <a href='eval/report.html'>eval/report.html</a>.</p>",
             "<h2>Findings</h2><ul>", *[f"<li>{e(line)}</li>" for line in findings(results)], "</ul>"]
    for name, file in plots.items():
        parts.append(f"<img src='{e(file.name)}' alt='{e(name)}'>")
    for title, note, header, rows in tables(results):
        parts.append(f"<h2>{e(title)}</h2><p class='note'>{e(note)}</p><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in rows]
        parts.append("</table>")
    if results["eval_warnings"]:
        parts += ["<h2>Evaluation warnings</h2><ul>", *[f"<li>{e(w)}</li>" for w in results["eval_warnings"]], "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: dict, output: Path) -> tuple[Path, Path]:
    plots = {}
    for name, fn, file in (("headline", plot_headline, HEADLINE_PLOT), ("training", plot_training, TRAINING_PLOT),
                           ("gold vs proxy", plot_gold, GOLD_PLOT),
                           ("length bias", plot_length, LENGTH_PLOT)):
        path = fn(results, output / file)
        if path is None:
            (output / file).unlink(missing_ok=True)
        else:
            plots[name] = path
    html_path, md_path = output / "report.html", output / "report.md"
    html_path.write_text(render_html(results, plots), encoding="utf-8")
    md_path.write_text(render_markdown(results, plots), encoding="utf-8")
    return html_path, md_path


__all__ = ["build_results", "fisher_ci", "wilson_ci", "write_report"]
