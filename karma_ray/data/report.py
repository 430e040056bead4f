"""Plots of a prepare run (report.png, linked from summary.md): where the records went, and what
the labels and contexts look like. Reads at most `max_rows` examples (enough for the shapes)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads


def plot_prepare_report(out: Path, manifest: dict, max_rows: int = 500_000) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    import numpy as np

    examples_dir = out / "examples"
    if not examples_dir.exists():
        return None
    ds = pads.dataset(examples_dir, format="parquet", partitioning="hive")
    t = ds.head(max_rows, columns=["log_score", "sibling_percentile", "context_depth", "seconds_since_parent"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))

    outcomes = {"examples": manifest["examples_written"], **manifest["dropped"], **{f"malformed: {k}": v for k, v in manifest["malformed"].items()}}
    names = sorted(outcomes, key=lambda k: -outcomes[k])
    ax = axes[0][0]
    ax.barh(names[::-1], [outcomes[n] for n in names[::-1]], color=["#4c72b0" if n == "examples" else "#c44e52" for n in names[::-1]])
    ax.set_xscale("log")
    ax.set_title(f"{manifest['records_read']:,} comments: where each went")

    ax = axes[0][1]
    ax.hist(t["log_score"].to_numpy(zero_copy_only=False), bins=60, color="#4c72b0")
    ax.set_title("log_score = sign(s) log(1 + |s|)")
    ax.set_yscale("log")

    ax = axes[1][0]
    depth = t["context_depth"].to_numpy(zero_copy_only=False)
    values, counts = np.unique(depth, return_counts=True)
    ax.bar(values, counts, color="#55a868")
    ax.set_title("ancestor comments in the context (context_depth)")
    ax.set_xlabel("turns")

    ax = axes[1][1]
    delay = t["seconds_since_parent"].to_numpy(zero_copy_only=False)
    pct = t["sibling_percentile"].to_numpy(zero_copy_only=False)
    ok = ~np.isnan(delay.astype(float)) & (delay > 0)
    if ok.any():
        bins = np.logspace(np.log10(max(delay[ok].min(), 1)), np.log10(delay[ok].max() + 1), 12)
        idx = np.digitize(delay[ok], bins)
        centers = [bins[i - 1] for i in range(1, len(bins)) if (idx == i).any()]
        means = [pct[ok][idx == i].mean() for i in range(1, len(bins)) if (idx == i).any()]
        ax.semilogx(centers, means, marker="o", color="#8172b2")
    ax.set_title("exposure: later replies rank lower among siblings")
    ax.set_xlabel("seconds since parent")
    ax.set_ylabel("mean sibling_percentile")

    fig.tight_layout()
    path = out / "report.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
