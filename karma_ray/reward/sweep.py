"""`karma sweep-rm`: Ray Tune over input variant x loss x learning rate, ASHA, one TorchTrainer per trial.

Ray 2.60 (Train V2) cannot wrap a trainer in a Tuner (`Tuner(trainer)` fails), so a trial is a FUNCTION
that builds and fits a TorchTrainer (the same `build_trainer` as `karma train-rm`) with
`TuneReportCallback`, which forwards each epoch's report (and its checkpoint path) to Tune. The trial
itself asks for `search.trial_cpus` (Tune refuses 0); its workers take their own CPUs.

The objective is `rm.train.objective` (default val_spearman, mode rm.train.objective_mode): any metric a
trial reports. A downstream metric (PPO, evaluation) can be added to the reports and named here.

Outputs in OUTPUT: config.yaml, results.csv (one row per trial: its best epoch by the objective),
best/<variant>/ (the best checkpoint of each variant, exported, scorer-loadable), best.csv (that
checkpoint's val and test metrics per variant), tune/ and trials/ (Ray storage).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from karma_ray.config import save_resolved
from karma_ray.data.corpus import PreparedCorpus
from karma_ray.reward.config import CONTROL_VARIANTS, LOSS_PRESETS, RewardModelConfig, SweepConfig
from karma_ray.reward.metrics import SplitMetrics
from karma_ray.stage import begin_stage, claim_output, config_digest, finish_stage


def trial_specs(search: Any) -> list[dict]:
    """The grid as explicit trials; a control (random/constant) is tried once, not once per loss x lr."""
    specs: dict[tuple, dict] = {}
    for variant, loss, lr in itertools.product(search.variants, search.losses, search.lrs):
        key = (variant,) if variant in CONTROL_VARIANTS else (variant, loss, lr)
        specs.setdefault(key, {"variant": variant, "loss": loss, "lr": lr})
    return list(specs.values())


def trial_config(base: RewardModelConfig, spec: dict) -> RewardModelConfig:
    """The base config with one trial's variant, loss preset and learning rate (validated)."""
    regression, pairwise_weight = LOSS_PRESETS[spec["loss"]]
    cfg = replace(
        base,
        input=replace(base.input, variant=spec["variant"]),
        loss=replace(base.loss, regression=regression, pairwise_weight=pairwise_weight),
        train=replace(base.train, lr=float(spec["lr"])),
    )
    from karma_ray.config import _validate_tree  # the same checks load_config runs

    _validate_tree(cfg)
    return cfg


def sweep_trial(trial: dict, base: RewardModelConfig, data: str, output: str) -> None:
    """One Tune trial: fit a TorchTrainer whose reports reach Tune through TuneReportCallback."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from karma_ray.reward.train import build_trainer, new_model_meta

    spec = trial["spec"] if "spec" in trial else trial
    cfg = trial_config(base, spec)
    trial_id = ray.tune.get_context().get_trial_id()
    trial_dir = Path(output) / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, data, trial_dir, new_model_meta(cfg, data), str(Path(output, "trials").resolve()), trial_id,
                            callbacks=[TuneReportCallback()])
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _search_space(search: Any) -> dict:
    from ray import tune

    if search.mode == "grid":
        return {"spec": tune.grid_search(trial_specs(search))}
    lo, hi = min(search.lrs), max(search.lrs)
    return {
        "variant": tune.choice(list(search.variants)),
        "loss": tune.choice(list(search.losses)),
        "lr": tune.loguniform(lo, hi) if hi > lo else lo,
    }


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def best_row(df: Any, objective: str, mode: str) -> dict | None:
    """The trial's report (a metrics_dataframe row) with the best objective; None if none is finite."""
    if df is None or objective not in df or df[objective].notna().sum() == 0:
        return None if df is None or not len(df) else df.iloc[-1].to_dict()
    idx = df[objective].idxmax() if mode == "max" else df[objective].idxmin()
    return df.loc[idx].to_dict()


@dataclass(frozen=True)
class SweepTrial:
    """One trial's row of results.csv: its best epoch by the objective."""

    trial_id: str | None
    variant: str
    loss: str
    lr: float
    epochs_run: int
    best_epoch: int | None
    objective: float | None  # the value of SweepResult.objective at best_epoch
    val_pairwise_accuracy: float | None
    val_mse: float | None
    error: str  # "" when the trial ran to its end (or ASHA stopped it)
    checkpoint_path: str | None


@dataclass(frozen=True)
class BestModel:
    """The best trial of one variant, exported and scored on val and test (a row of best.csv)."""

    variant: str
    loss: str
    lr: float
    best_epoch: int | None
    model_dir: Path
    val: SplitMetrics
    test: SplitMetrics


@dataclass(frozen=True)
class SweepResult:
    output: Path
    objective: str  # the metric trials were ranked by (rm.train.objective)
    trials: list[SweepTrial]
    best: dict[str, BestModel]  # variant -> its best model
    results_csv: Path
    best_csv: Path


def run_sweep_rm(cfg: SweepConfig, output: str | os.PathLike, *, data: str | os.PathLike, overwrite: bool = False) -> SweepResult:
    """Run the sweep, export the best checkpoint per variant, evaluate it on val and test. The corpus
    and the output folder are checked before Ray starts (CorpusError, OutputExistsError)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from karma_ray.console import stage_bar, tune_progress
    from karma_ray.models.hf import absolute_if_local
    from karma_ray.ray_utils import init_ray
    from karma_ray.reward.train import evaluate_model_dir, export_checkpoint

    # Trials and their workers run in Tune/Train working directories: local paths must be absolute.
    cfg = replace(cfg, rm=replace(cfg.rm, model=replace(cfg.rm.model, backbone=absolute_if_local(cfg.rm.model.backbone))))
    data = PreparedCorpus.open(data, pairs=("train",) if any(x.endswith("bt") for x in cfg.search.losses) else ()).root
    # the output policy of karma_ray.stage (a sweep does not resume: Tune restores trials itself)
    out = claim_output(output, "sweep-rm", overwrite=overwrite, resumable=False,
                       recognizes=lambda p: any((p / f).exists() for f in ("results.csv", "tune", "config.yaml")))
    save_resolved(cfg, out)
    digest = config_digest(cfg, [data])
    begin_stage(out, "sweep-rm", digest)
    # Ray Train V2 frees the worker placement group of a trial that ASHA stops (its controller is
    # killed) through a PlacementGroupCleaner that asks the State API, which needs the dashboard.
    # Without it the stopped trial's CPUs stay reserved and the next trial waits forever (measured:
    # a 4-trial sweep on 2 CPUs hung after trial 1). The dashboard binds to cfg.ray.dashboard_host
    # (loopback by default).
    init_ray(replace(cfg.rm.ray, include_dashboard=True))
    s, objective, mode = cfg.search, cfg.rm.train.objective, cfg.rm.train.objective_mode
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", max_t=cfg.rm.train.epochs, grace_period=min(s.grace_period, cfg.rm.train.epochs),
                      reduction_factor=s.reduction_factor)
        if s.asha else None
    )
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, base=cfg.rm, data=str(Path(data).resolve()), output=str(out.resolve())),
        {"cpu": s.trial_cpus},
    )
    n_trials = s.num_samples * (len(trial_specs(s)) if s.mode == "grid" else 1)
    with stage_bar("rm sweep", total=n_trials, unit="trial") as bar:
        tuner = tune.Tuner(
            trainable,
            param_space=_search_space(s),
            tune_config=tune.TuneConfig(metric=objective, mode=mode, scheduler=scheduler, num_samples=s.num_samples,
                                        max_concurrent_trials=s.max_concurrent_trials),
            run_config=tune.RunConfig(storage_path=str((out / "tune").resolve()), name="sweep_rm", verbose=0,
                                      callbacks=[tune_progress(bar)]),
        )
        grid = tuner.fit()

    trials = []
    for result in grid:
        spec = result.config.get("spec") or {k: result.config.get(k) for k in ("variant", "loss", "lr")}
        best = best_row(result.metrics_dataframe, objective, mode) or {}
        trials.append(SweepTrial(
            trial_id=Path(result.path).name if result.path else None,
            variant=spec["variant"], loss=spec["loss"], lr=spec["lr"],
            epochs_run=int(best.get("training_iteration", 0) or 0) if not result.metrics else int(result.metrics.get("epoch", 0)),
            best_epoch=best.get("epoch"),
            objective=_finite(best.get(objective)),
            val_pairwise_accuracy=_finite(best.get("val_pairwise_accuracy")),
            val_mse=_finite(best.get("val_mse")),
            error=repr(result.error) if result.error else "",
            checkpoint_path=best.get("checkpoint_path"),
        ))
    sign = 1 if mode == "max" else -1
    best_models: dict[str, BestModel] = {}
    for variant in dict.fromkeys(t.variant for t in trials):
        candidates = [t for t in trials if t.variant == variant and t.checkpoint_path]
        if not candidates:
            continue
        winner = max(candidates, key=lambda t: -math.inf if t.objective is None else sign * t.objective)
        model_dir = export_checkpoint(winner.checkpoint_path, out / "best" / variant)
        metrics = evaluate_model_dir(model_dir, data, trial_config(cfg.rm, {"variant": winner.variant, "loss": winner.loss, "lr": winner.lr}))
        (model_dir.parent / f"{variant}_metrics.json").write_text(json.dumps(metrics, indent=2))
        best_models[variant] = BestModel(variant=variant, loss=winner.loss, lr=winner.lr, best_epoch=winner.best_epoch,
                                         model_dir=model_dir, val=SplitMetrics.from_dict(metrics["val"]),
                                         test=SplitMetrics.from_dict(metrics["test"]))
    sweep = SweepResult(output=out, objective=objective, trials=trials, best=best_models,
                        results_csv=out / "results.csv", best_csv=out / "best.csv")
    _write_csv(sweep.results_csv, [trial_row(t, objective) for t in trials])
    _write_csv(sweep.best_csv, [best_model_row(b) for b in best_models.values()])
    finish_stage(out, "sweep-rm", digest, {"trials": len(trials), "best": len(best_models),
                                           **{f"{v}_test_spearman": b.test.spearman for v, b in best_models.items()}})
    return sweep


def trial_row(t: SweepTrial, objective: str) -> dict:
    """results.csv columns (SweepTrial's order): the objective is named by its metric."""
    return {objective if k == "objective" else k: v for k, v in asdict(t).items()}


def best_model_row(b: BestModel) -> dict:
    split_cols = {f"{split}_{k}": getattr(getattr(b, split), k) for split in ("val", "test") for k in ("spearman", "pearson", "pairwise_accuracy", "mse")}
    return {"variant": b.variant, "loss": b.loss, "lr": b.lr, "best_epoch": b.best_epoch, **split_cols, "model": str(b.model_dir)}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:  # no rows: an empty file
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def render_table(sweep: SweepResult) -> str:
    """The two result tables as aligned text."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = []
    for title, rows, hidden in (
        ("trials", [trial_row(t, sweep.objective) for t in sweep.trials], ("checkpoint_path", "error")),
        ("best per variant (test = held-out threads)", [best_model_row(b) for b in sweep.best.values()], ("model",)),
    ):
        cols = [c for c in (rows[0] if rows else {}) if c not in hidden]
        lines.append(f"== {title}")
        cells = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
