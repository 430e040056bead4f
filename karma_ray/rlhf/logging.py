"""Where PPO metrics go: DIR/metrics.jsonl (one JSON line per iteration, the source of truth),
TensorBoard event files (tensorboardX, shipped with ray[tune]), W&B / MLflow when configured, a
progress bar, and at the end DIR/curves.png + DIR/report.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from karma_ray.rlhf.config import RunConfig

METRICS = "metrics.jsonl"
CURVES = "curves.png"


class MetricsLogger:
    def __init__(self, output_dir: Path, run: RunConfig) -> None:
        from tqdm.auto import tqdm

        self.output_dir = Path(output_dir)
        self.path = self.output_dir / METRICS
        self._tb = None
        if run.tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.output_dir / "tensorboard"))
        self._wandb = None
        if run.wandb_project:
            import wandb  # a clear ImportError if requested but not installed

            self._wandb = wandb.init(project=run.wandb_project, dir=str(self.output_dir))
        self._mlflow = None
        if run.mlflow_uri:
            import mlflow

            mlflow.set_tracking_uri(run.mlflow_uri)
            mlflow.start_run()
            self._mlflow = mlflow
        self._bar = tqdm(total=run.iterations, desc="ppo", unit="it", dynamic_ncols=True)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines of iterations after the checkpoint (they will be run again)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))
        self._bar.update(step - self._bar.n)

    def log(self, metrics: dict[str, Any]) -> None:
        step = metrics["step"]
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics, allow_nan=True) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            # NaN marks a metric that does not apply (no critic, no known peak FLOP/s): metrics.jsonl
            # keeps it, TensorBoard leaves the point out (tensorboardX would warn on the console).
            for k, v in scalars.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._mlflow is not None:
            self._mlflow.log_metrics({k.replace("/", "_"): v for k, v in scalars.items() if math.isfinite(v)}, step=step)
        self._bar.update(1)
        self._bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.3f}", s=f"{metrics['time/iteration']:.1f}")

    def close(self) -> None:
        self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            self._mlflow.end_run()
        rows = read_metrics(self.path)
        if rows:
            plot_curves(rows, self.output_dir / CURVES)
            write_report(rows, self.output_dir)


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


Z95 = 1.959964


def _band(ax: Any, steps: list, rows: list[dict], key: str, sem_key: str, label: str, color: Any = None) -> None:
    """The batch mean with its 95% noise band (mean +- 1.96 standard errors of the batch)."""
    ys = [r.get(key, float("nan")) for r in rows]
    half = [Z95 * r.get(sem_key, float("nan")) for r in rows]
    (line,) = ax.plot(steps, ys, marker="o", ms=3, label=label, color=color)
    ax.fill_between(steps, [y - h for y, h in zip(ys, half)], [y + h for y, h in zip(ys, half)], alpha=0.2,
                    color=line.get_color())


def plot_curves(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7))
    panels = iter(axes.flat)

    ax = next(panels)
    _band(ax, steps, rows, "reward_mean", "reward_sem", "reward")
    ax.set_title("reward of the batch (mean, 95% band)")
    ax = next(panels)
    if any("gold_mean" in r for r in rows):
        _band(ax, steps, rows, "gold_mean", "gold_sem", "gold", color="tab:green")
        ax.set_title("planted gold text quality (mean, 95% band)")
    else:
        ax.text(0.5, 0.5, "no gold quality\n(not a synthetic corpus)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("gold text quality")
    for key, label in (("kl", "KL(policy || reference) per sequence"), ("entropy", "entropy per token"),
                       ("response_length", "response length (tokens)")):
        ax = next(panels)
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], marker="o", ms=3)
        ax.set_title(label)
    ax = next(panels)
    for key in ("clip_frac", "approx_kl"):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key)
    ax.set_title("policy update")
    ax.legend()
    ax = next(panels)
    evals = sorted({k for r in rows for k in r if k.startswith("eval/") and not k.endswith(("_ci_low", "_ci_high", "_stderr"))})
    for key in evals:
        pts = [(r["step"], r[key], r.get(key + "_ci_low"), r.get(key + "_ci_high")) for r in rows if key in r]
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=key[5:])
        if all(p[2] is not None and p[3] is not None for p in pts):
            ax.fill_between([p[0] for p in pts], [p[2] for p in pts], [p[3] for p in pts], alpha=0.15, color=line.get_color())
    if evals:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no in-training evaluation\n(eval.every_iterations = 0)", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("in-training evaluation (95% CI)")
    ax = next(panels)
    phases = sorted({k for r in rows for k in r if k.startswith("time/") and k != "time/iteration"})
    bottom = [0.0] * len(rows)
    for k in phases:
        ys = [r.get(k, 0.0) for r in rows]
        ax.bar(steps, ys, bottom=bottom, label=k[5:])
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax.set_title("seconds per phase")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in axes.flat:
        ax.set_xlabel("iteration")
    fig.suptitle("PPO run")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(rows: list[dict], output_dir: Path) -> Path:
    first, last = rows[0], rows[-1]
    phases = sorted({k for r in rows for k in r if k.startswith("time/")})
    lines = [
        "# PPO run",
        "",
        f"![curves]({CURVES})",
        "",
        "| metric | first iteration | last iteration |",
        "|---|---|---|",
    ]
    for k in ("reward_mean", "reward_sem", "gold_mean", "gold_sem", "reward_std", "kl", "entropy", "clip_frac", "value_loss", "response_length", "rollout_logprob_max_abs_diff", "tokens_per_s"):
        if k in last:
            lines.append(f"| {k} | {first.get(k, float('nan')):.4g} | {last[k]:.4g} |")
    lines += ["", "Mean seconds per phase:", "", "| phase | s |", "|---|---|"]
    for k in phases:
        lines.append(f"| {k[5:]} | {sum(r.get(k, 0.0) for r in rows) / len(rows):.3f} |")
    path = output_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
