"""`karma sweep-ppo`: Ray Tune over PPO settings (the KL coefficient first), judged downstream.

    karma sweep-ppo --config configs/ppo/sweep_kl_tiny.yaml --output runs/sweep-kl

Each trial is one PPO run (`run_ppo`) with one point of `search.space` applied to the base config.
The objective is not the reward the policy is trained on (that would crown the trial that hacks it
hardest) but the in-training evaluation (`eval.every_iterations`): a weighted sum of its metrics,
e.g. pragmatics minus a factuality penalty, `{eval/humor/acc: 1.0, eval/truthfulqa_mc2/mc2: 0.5}`
(a positive weight on factuality: a trial that loses truthfulness loses objective). Every eval
round is one Tune report, so ASHA compares trials round by round and stops the weak ones early.

Output: results.csv (a row per trial: its settings, objective at every round, rounds run, stopped
early or not, error), best_config.yaml (the resolved PPO config of the best trial, ready for
`karma ppo --config`), summary.md, tune/ (Tune's own state), trials/NAME/ (each PPO run's folder).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from karma_ray.config import ConfigError, load_config, mapping_option, option, save_resolved, section
from karma_ray.rlhf.config import PPOConfig
from karma_ray.stage import begin_stage, claim_output, config_digest, finish_stage

STAGE = "sweep-ppo"
OBJECTIVE = "objective"


@dataclass(frozen=True)
class PPOSearchConfig:
    space: dict[str, tuple] = mapping_option(
        {"algo.kl_coef": (0.005, 0.02, 0.08)},
        "Dotted PPO keys -> the values to try; the trials are every combination (a grid), each `num_samples` times.")
    objective: dict[str, float] = mapping_option(
        {"eval/humor/acc": 1.0, "eval/truthfulqa_mc2/mc2": 0.5},
        "The objective, maximized: sum of weight x metric over these metrics.jsonl columns (eval/TASK/METRIC from "
        "the in-training evaluation; a training column such as kl works too, with a negative weight as a penalty).")
    num_samples: int = option(1, "Repeats of the grid (different trial names; set run.seed in the space to vary seeds).")
    asha: bool = option(True, "Stop weak trials early with ASHA, round by round of the in-training evaluation.")
    grace_period: int = option(1, "ASHA: evaluation rounds every trial runs before it can be stopped.")
    reduction_factor: float = option(2.0, "ASHA: keep about 1/reduction_factor of the trials at each rung.")
    max_concurrent_trials: int = option(0, "Trials at once (0: as many as the cluster holds, from each trial's placement).")
    trial_cpus: float = option(0.1, "CPUs of each trial's own driver (its PPO roles reserve theirs).")

    def validate(self) -> None:
        if not self.space or any(not isinstance(v, (list, tuple)) or not v for v in self.space.values()):
            raise ConfigError("search.space must map each dotted PPO key to a non-empty list of values")
        if not self.objective or any(not isinstance(w, (int, float)) or not math.isfinite(w) for w in self.objective.values()):
            raise ConfigError("search.objective must map metric names to finite weights")
        if self.num_samples < 1 or self.grace_period < 1 or self.reduction_factor <= 1 or self.max_concurrent_trials < 0:
            raise ConfigError("search: num_samples, grace_period >= 1, reduction_factor > 1, max_concurrent_trials >= 0")
        if self.trial_cpus <= 0:
            raise ConfigError("search.trial_cpus must be > 0 (Ray Tune cannot give a trial 0 CPUs)")


@dataclass(frozen=True)
class SweepPPOConfig:
    ppo_config: str = option("configs/ppo/tiny.yaml", "The `karma ppo` config every trial starts from.")
    ppo_overrides: tuple[str, ...] = option((), "Dotted overrides of it, for every trial.")
    search: PPOSearchConfig = section(PPOSearchConfig, "The search space, the objective and the scheduler.")

    def validate(self) -> None:
        plan_trials(self)  # every trial's config is built and validated here, before Ray starts


@dataclass(frozen=True)
class PlannedTrial:
    params: dict  # dotted key -> value of this grid point (plain data: it is pickled into Tune trials)
    ppo: PPOConfig = field(repr=False)


def _literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else yaml_inline(value)


def yaml_inline(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def plan_trials(cfg: SweepPPOConfig) -> list[PlannedTrial]:
    """The grid: one resolved, validated PPOConfig per point. Raises ConfigError for a key PPO does
    not have, a value it refuses, or an objective the in-training evaluation cannot produce."""
    base = list(cfg.ppo_overrides)
    keys = list(cfg.search.space)
    trials = []
    for values in itertools.product(*(cfg.search.space[k] for k in keys)):
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in zip(keys, values)}
        try:
            ppo = load_config(PPOConfig, cfg.ppo_config, base + [f"{k}={_literal(v)}" for k, v in params.items()])
        except ConfigError as exc:
            raise ConfigError(f"search.space point {params}: {exc}") from None
        trials.append(PlannedTrial(params, ppo))
    first = trials[0].ppo
    if not first.eval.every_iterations:
        raise ConfigError("the PPO config has no in-training evaluation (eval.every_iterations = 0): the sweep's "
                          "objective is computed from it; set eval.every_iterations (and eval.tasks)")
    from karma_ray.eval.tasks import load_task_specs

    reported = {s.task: s.reported_metric for s in load_task_specs(first.eval.tasks, first.eval.task_dirs)}
    for metric in cfg.search.objective:
        if metric.startswith("eval/"):
            _, task, name = (metric.split("/", 2) + ["", ""])[:3]
            if task not in reported:
                raise ConfigError(f"search.objective: {metric!r} names task {task!r}, which eval.tasks "
                                  f"{list(first.eval.tasks)} does not run")
            if name != reported[task]:
                raise ConfigError(f"search.objective: task {task} reports eval/{task}/{reported[task]}, not {metric!r}")
    return trials


def rounds(ppo: PPOConfig) -> int:
    """Evaluation rounds of a full run: ASHA's max_t."""
    return ppo.run.iterations // ppo.eval.every_iterations


def objective_value(metrics: dict, weights: dict[str, float]) -> float:
    """sum(weight x metric); NaN when a metric is missing or NaN (Tune then ranks the trial last)."""
    total = 0.0
    for key, w in weights.items():
        v = metrics.get(key)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return float("nan")
        total += w * v
    return total


def sweep_trial(config: dict, trials: list[PlannedTrial], weights: dict[str, float], output: str) -> None:
    """One Tune trial: the PPO run of one grid point, reporting at every in-training evaluation."""
    from ray import tune

    from karma_ray.rlhf.cli import run_ppo
    from karma_ray.rlhf.placement import OWNER_ENV

    planned = trials[config["point"]]
    context = tune.get_context()
    folder = Path(output) / "trials" / context.get_trial_name()
    os.environ[OWNER_ENV] = context.get_trial_id()  # names this run's placement groups (rlhf.placement)

    def report(_driver: Any, m: dict) -> None:
        if not any(k.startswith("eval/") for k in m):
            return
        scalars = {k: v for k, v in m.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        tune.report({OBJECTIVE: objective_value(m, weights), **scalars, "folder": str(folder)})

    run_ppo(planned.ppo, folder, overwrite=True, on_iteration_end=report)


@dataclass(frozen=True)
class SweepPPOTrial:
    name: str
    params: dict
    objectives: list[float]  # at each evaluation round it reached
    rounds_planned: int
    error: str
    folder: Optional[str]

    @property
    def stopped_early(self) -> bool:
        return not self.error and len(self.objectives) < self.rounds_planned

    @property
    def final(self) -> float:
        return self.objectives[-1] if self.objectives else float("nan")


@dataclass(frozen=True)
class SweepPPOResult:
    output: Path
    results_csv: Path
    best_config: Optional[Path]  # None when no trial reached an evaluation
    best: Optional[SweepPPOTrial]
    trials: list[SweepPPOTrial]


def run_sweep_ppo(cfg: SweepPPOConfig, output: str | os.PathLike, *, overwrite: bool = False) -> SweepPPOResult:
    """Run the sweep. Every trial config is built and checked before Ray starts (ConfigError)."""
    planned = plan_trials(cfg)
    out = claim_output(output, STAGE, resume=False, overwrite=overwrite)
    save_resolved(cfg, out)
    digest = config_digest(cfg)
    begin_stage(out, STAGE, digest)

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from karma_ray.console import stage_bar, tune_progress
    from karma_ray.ray_utils import init_ray
    from karma_ray.rlhf.placement import plan_placement, release_placement_groups_callback
    from karma_ray.rlhf.roles import role_requests

    import ray

    init_ray(replace(planned[0].ppo.ray, include_dashboard=True))
    s = cfg.search
    max_t = rounds(planned[0].ppo)
    concurrent = s.max_concurrent_trials
    if not concurrent:
        need = max(plan_placement(t.ppo.placement.mode, t.ppo.placement.strategy, role_requests(t.ppo)).total().get("CPU", 0.0)
                   for t in planned)
        concurrent = max(1, int(ray.cluster_resources().get("CPU", 0.0) // (need + s.trial_cpus)))
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(s.grace_period, max_t),
                               reduction_factor=s.reduction_factor) if s.asha else None)
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, trials=planned, weights=dict(s.objective), output=str(out.resolve())),
        {"cpu": s.trial_cpus})
    with stage_bar("ppo sweep", total=len(planned) * s.num_samples, unit="trial") as bar:
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(list(range(len(planned))))},
            tune_config=tune.TuneConfig(metric=OBJECTIVE, mode="max", scheduler=scheduler, num_samples=s.num_samples,
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(storage_path=str((out / "tune").resolve()), name="sweep_ppo", verbose=0,
                                      callbacks=[tune_progress(bar), release_placement_groups_callback()]),
        )
        grid = tuner.fit()

    trials = []
    for result in grid:
        df = result.metrics_dataframe
        objectives = [float(x) for x in df[OBJECTIVE]] if df is not None and OBJECTIVE in df else []
        trials.append(SweepPPOTrial(
            name=Path(result.path).name if result.path else "?", params=planned[result.config["point"]].params,
            objectives=objectives, rounds_planned=max_t, error=repr(result.error) if result.error else "",
            folder=(result.metrics or {}).get("folder")))
    scored = [t for t in trials if t.objectives and math.isfinite(t.final)]
    # The best trial is judged at the last round it reached: a trial ASHA stopped never beat the
    # survivors at the rung it was stopped on.
    best = max(scored, key=lambda t: (len(t.objectives), t.final), default=None)
    results_csv = write_results(out, trials, list(s.space), list(s.objective))
    best_config = None
    if best is not None:
        best_config = out / "best_config.yaml"
        best_ppo = planned[next(i for i, p in enumerate(planned) if p.params == best.params)].ppo
        save_resolved(best_ppo, out, best_config.name)
    (out / "summary.md").write_text(render_summary(trials, best, cfg))
    finish_stage(out, STAGE, digest, {"trials": len(trials), "stopped_early": sum(t.stopped_early for t in trials),
                                      "failed": sum(bool(t.error) for t in trials),
                                      "best": best.params if best else None})
    return SweepPPOResult(out, results_csv, best_config, best, trials)


def write_results(out: Path, trials: list[SweepPPOTrial], keys: list[str], metrics: list[str]) -> Path:
    path = out / "results.csv"
    n = max((t.rounds_planned for t in trials), default=0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", *keys, "rounds", "stopped_early", "objective_final",
                    *[f"objective_round{i + 1}" for i in range(n)], "error"])
        for t in trials:
            w.writerow([t.name, *[t.params.get(k) for k in keys], len(t.objectives), t.stopped_early,
                        "" if not t.objectives else f"{t.final:.6g}",
                        *[f"{t.objectives[i]:.6g}" if i < len(t.objectives) else "" for i in range(n)], t.error])
    return path


def render_summary(trials: list[SweepPPOTrial], best: Optional[SweepPPOTrial], cfg: SweepPPOConfig) -> str:
    weights = " + ".join(f"{w:g} x {k}" for k, w in cfg.search.objective.items())
    lines = [f"# PPO sweep: {len(trials)} trials", "", f"Objective (maximized, at each in-training evaluation): {weights}", "",
             "| trial | " + " | ".join(cfg.search.space) + " | rounds | stopped early | final objective | error |",
             "|---" * (len(cfg.search.space) + 5) + "|"]
    for t in sorted(trials, key=lambda t: (-len(t.objectives), -(t.final if math.isfinite(t.final) else -1e9))):
        lines.append(f"| {t.name} | " + " | ".join(str(t.params.get(k)) for k in cfg.search.space)
                     + f" | {len(t.objectives)}/{t.rounds_planned} | {'yes' if t.stopped_early else 'no'} | "
                     + ("" if not t.objectives else f"{t.final:.4f}") + f" | {t.error[:80]} |")
    lines += ["", f"Best: {best.name} {best.params} (objective {best.final:.4f} after {len(best.objectives)} rounds)"
              if best else "No trial reached an evaluation round.", ""]
    return "\n".join(lines)
