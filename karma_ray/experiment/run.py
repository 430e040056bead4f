"""`run_experiment(cfg, output)`: the KARMA study as one command, every stage cached by its config.

    1 corpus    a synthetic Pushshift-format corpus (or the given dumps, read in place)
    2 prepare   Ray Data: dumps -> examples + pairs + manifest
    3 models    the base policy and RM backbone ('tiny': random-init models on a corpus tokenizer)
    4 rm        Ray Tune: one reward-model trial per variant (text, text_meta, ..., the controls)
    5 sft       the exposure policy: the base fine-tuned on the corpus's train split
    6 ppo       Ray Tune: one trial per reward variant x exposure condition x seed
    7 eval      every policy (and the SFT policy) against the base, paired tests
    8 report    results.json, report.html / report.md, the headline plot

Caching: each stage's folder gets `karma_experiment.json` once the stage has finished, holding the
digest of the stage's resolved config AND of every stage upstream of it. A rerun skips a stage whose
digest matches (and whose own `karma_stage.json` says finished); anything else (absent, partial,
stale) runs again from a clean folder. So a killed experiment resumes where it stopped, and a change
to one config reruns exactly the stages downstream of it.

Every stage config is built and validated (`plan_experiment`) before anything runs: a missing corpus,
an unknown variant or a PPO cell that cannot fit the cluster fails before any trial starts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from karma_ray.config import ConfigError, PrepareConfig, load_config, save_resolved, to_dict
from karma_ray.experiment.config import ExperimentConfig
from karma_ray.stage import OutputExistsError, begin_stage, claim_output, config_digest, finish_stage, read_stage

MARKER = "karma_experiment.json"
STAGE = "experiment"
REPO = Path(__file__).resolve().parents[2]


class ExperimentError(ValueError):
    """An experiment config that cannot run (raised before any Ray resource is taken)."""


def say(message: str) -> None:
    print(f"[experiment] {message}", file=sys.stderr, flush=True)


# -- the plan: every stage config, built and validated up front ---------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One PPO trial of the matrix."""

    variant: str  # the reward model's input variant
    condition: str  # "exposure" | "base"
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.condition}-s{self.seed}"


@dataclass(frozen=True)
class Step:
    """One cached stage: where it writes and the digest of its config and everything upstream."""

    key: str
    folder: Path
    digest: str


@dataclass
class ExperimentPlan:
    cfg: ExperimentConfig
    output: Path
    corpus_inputs: list[str]  # the dumps prepare reads
    prepare: PrepareConfig
    rm: Any  # SweepConfig
    sft: Any  # SFTConfig | None (no exposure arm)
    base_policy: str  # path or id of the base (no-exposure) policy
    ppo: dict[str, Any]  # cell name -> PPOConfig
    cells: list[Cell]
    eval: Any  # EvalConfig
    eval_models: list[str]  # "NAME=PATH", the base first
    steps: dict[str, Step] = field(default_factory=dict)  # key -> Step
    prompts_note: str = ""


def _resolve(path: str) -> Path:
    """A config path relative to the working directory, else to the repository (configs/...)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    if (REPO / p).exists():
        return REPO / p
    raise ExperimentError(f"config file {path} does not exist (looked in {Path.cwd()} and {REPO})")


def _digest(cfg: Any, *upstream: Step) -> str:
    return config_digest(cfg, [s.digest for s in upstream])


def loss_preset(rm: Any) -> str:
    """The sweep's name for the rm config's own loss (a sweep trial applies a named preset)."""
    from karma_ray.reward.config import LOSS_PRESETS

    for name, (regression, pairwise_weight) in LOSS_PRESETS.items():
        if (regression, pairwise_weight) == (rm.loss.regression, rm.loss.pairwise_weight):
            return name
    raise ExperimentError(f"rm: loss.regression={rm.loss.regression} with loss.pairwise_weight={rm.loss.pairwise_weight} "
                          f"is none of the sweep's presets {dict(LOSS_PRESETS)}")


def plan_experiment(cfg: ExperimentConfig, output: str | os.PathLike) -> ExperimentPlan:
    """Every stage's config, with the paths that link stages filled in, validated; no file is written."""
    from karma_ray.eval.config import EvalConfig
    from karma_ray.config import _validate_tree
    from karma_ray.reward.config import RewardModelConfig, SearchConfig, SweepConfig
    from karma_ray.rlhf.config import PPOConfig
    from karma_ray.sft.config import SFTConfig

    out = Path(output).resolve()  # trials and Train workers run in their own working directories
    c = cfg.corpus
    if c.synthetic_comments:
        inputs = [str(out / "corpus")]
    else:
        inputs = [str(Path(i).expanduser().resolve()) for i in c.inputs]
        missing = [i for i in inputs if not Path(i).exists()]
        if missing:
            raise ExperimentError(f"corpus.inputs: {missing} do not exist")
    prepared = out / "prepared"
    tiny = out / "models"
    policy = str(tiny / "policy") if cfg.models.policy == "tiny" else cfg.models.policy
    backbone = str(tiny / "rm_backbone") if cfg.models.rm_backbone == "tiny" else cfg.models.rm_backbone
    from karma_ray.models.hf import absolute_if_local
    from karma_ray.models.packaged import PackagedModelError, check_resolvable

    for key, value in (("models.policy", cfg.models.policy), ("models.rm_backbone", cfg.models.rm_backbone)):
        if value != "tiny":
            try:
                check_resolvable(value, key)  # an unknown or uninstalled packaged: id fails here, before Ray
            except PackagedModelError as err:
                raise ExperimentError(str(err)) from None
    policy = absolute_if_local(policy)
    backbone = absolute_if_local(backbone)

    def load(cls: type, section: Any, extra: list[str], what: str) -> Any:
        try:
            return load_config(cls, _resolve(section.config), [*section.overrides, *extra])
        except ConfigError as err:
            raise ExperimentError(f"{what} ({section.config}): {err}") from None

    ray_overrides = [f"ray.num_cpus={cfg.ray.num_cpus}"] if cfg.ray.num_cpus is not None else []
    prepare = load(PrepareConfig, c, [], "corpus.config")
    rm_base = load(RewardModelConfig, cfg.rm, [f"model.backbone={backbone}", *ray_overrides], "rm.config")
    # One trial per variant at the config's own loss and rate, no ASHA: variants are compared, not pruned.
    rm_sweep = SweepConfig(rm=rm_base, search=SearchConfig(
        variants=cfg.rm.variants, losses=(loss_preset(rm_base),), lrs=(rm_base.train.lr,), asha=False,
        max_concurrent_trials=cfg.rm.max_concurrent_trials))
    try:
        _validate_tree(rm_sweep)
    except ConfigError as err:
        raise ExperimentError(f"rm: {err}") from None

    sft = None
    if "exposure" in cfg.exposure.conditions:
        sft = load(SFTConfig, cfg.exposure, [f"model.path={policy}", *ray_overrides], "exposure.config")
    rm_dir = out / "rm" / "best"
    if cfg.ppo.prompts == "corpus":
        prompt_overrides = ["prompts.source=prepared", f"prompts.path={prepared}", "prompts.split=train"]
        note = "PPO prompts: the corpus's train contexts (Reddit text) in both arms; the base arm's policy saw no Reddit text before PPO."
    else:
        prompt_file = Path(cfg.ppo.prompts).expanduser().resolve()
        if not prompt_file.is_file():
            raise ExperimentError(f"ppo.prompts: {prompt_file} is not a file (give 'corpus' or a JSONL/Parquet prompt file)")
        prompt_overrides = ["prompts.source=file", f"prompts.path={prompt_file}"]
        note = f"PPO prompts: {prompt_file.name} (no Reddit text): the base arm never sees the corpus."
    cells = [Cell(v, cond, s) for v in cfg.policy_variants for cond in cfg.exposure.conditions for s in cfg.ppo.seeds_of(v)]
    ppo: dict[str, Any] = {}
    for cell in cells:
        start = str(out / "sft" / "model") if cell.condition == "exposure" else policy
        ppo[cell.name] = load(PPOConfig, cfg.ppo, [
            f"model.policy={start}", f"reward.models=[{{path: '{rm_dir / cell.variant}', name: karma_{cell.variant}}}]",
            *prompt_overrides, f"run.seed={cell.seed}", "run.final_checkpoint=false", *ray_overrides], "ppo.config")
    judge = rm_dir / cfg.rm.judge
    evaluation = load(EvalConfig, cfg.eval, [f"karma.corpus={prepared}", f"karma.reward_model={judge}", *ray_overrides], "eval.config")
    models = [f"base={policy}"]
    if sft is not None:
        models.append(f"sft={out / 'sft' / 'model'}")
    models += [f"{cell.name}={out / 'ppo' / cell.name / 'policy'}" for cell in cells]

    plan = ExperimentPlan(cfg, out, inputs, prepare, rm_sweep, sft, policy, ppo, cells, evaluation, models, prompts_note=note)
    _check_resources(plan)
    _chain_digests(plan)
    return plan


def _check_resources(plan: ExperimentPlan) -> None:
    """A PPO cell larger than a fixed local cluster can never start: say so now, not after hours of RM training."""
    from karma_ray.rlhf.placement import check_fits, plan_placement
    from karma_ray.rlhf.roles import role_requests

    cpus = plan.cfg.ray.num_cpus
    if plan.cfg.ray.address or os.environ.get("RAY_ADDRESS") or cpus is None:
        return  # a cluster that may autoscale, or all this machine's CPUs: checked against the live cluster
    for name, ppo in plan.ppo.items():
        pp = plan_placement(ppo.placement.mode, ppo.placement.strategy, role_requests(ppo))
        short = check_fits(pp, {"CPU": cpus - plan.cfg.ppo.trial_cpus, "GPU": 0.0})
        if short:
            raise ExperimentError(f"PPO cell {name} cannot fit the local cluster of {cpus} CPUs (minus the trial's "
                                  f"{plan.cfg.ppo.trial_cpus:g}): {short}")


def _chain_digests(plan: ExperimentPlan) -> None:
    out, cfg, steps = plan.output, plan.cfg, plan.steps

    def add(key: str, folder: Path, config: Any, *upstream: Step) -> Step:
        steps[key] = Step(key, folder, _digest(config, *upstream))
        return steps[key]

    corpus = add("corpus", out / "corpus", {"comments": cfg.corpus.synthetic_comments, "seed": cfg.corpus.synthetic_seed,
                                             "inputs": plan.corpus_inputs})
    prepare = add("prepare", out / "prepared", plan.prepare, corpus)
    models = add("models", out / "models", to_dict(cfg.models), prepare)
    rm = add("rm", out / "rm", plan.rm, prepare, models)
    policy_up = (models,) if cfg.models.policy == "tiny" else ()
    sft = add("sft", out / "sft", plan.sft, prepare, *policy_up) if plan.sft is not None else None
    for cell in plan.cells:
        start = (sft,) if cell.condition == "exposure" else policy_up
        add(f"ppo/{cell.name}", out / "ppo" / cell.name, plan.ppo[cell.name], rm, prepare, *start)
    add("eval", out / "eval", {"eval": to_dict(plan.eval), "models": plan.eval_models},
        *[s for k, s in steps.items() if k.startswith("ppo/") or k in ("rm", "sft", "prepare", "models")])


# -- caching -----------------------------------------------------------------------------------------------


def is_done(step: Step) -> bool:
    """The stage finished with this digest (its marker matches, and its own record, if any, says finished)."""
    marker = step.folder / MARKER
    if not marker.is_file():
        return False
    try:
        if json.loads(marker.read_text()).get("digest") != step.digest:
            return False
    except ValueError:
        return False
    record = read_stage(step.folder)
    return record is None or record.state == "finished"


def mark_done(step: Step, summary: Optional[dict] = None) -> None:
    tmp = step.folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"key": step.key, "digest": step.digest, "finished_at": time.time(), "summary": summary or {}},
                              indent=2, default=str) + "\n")
    os.replace(tmp, step.folder / MARKER)


@dataclass
class StageLog:
    """Which stages ran and which were skipped as finished, with their wall times."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)


def cached(step: Step, log: StageLog, label: str, run: Callable[[], Optional[dict]]) -> None:
    from karma_ray.console import quiet_ray

    quiet_ray(step.folder.parent / "logs")  # a library imported by the last stage may have added console handlers
    if is_done(step):
        log.skipped.append(step.key)
        say(f"{label}: finished with this config, skipped ({step.folder})")
        return
    say(f"{label} -> {step.folder}")
    t0 = time.monotonic()
    summary = run()
    log.wall_s[step.key] = round(time.monotonic() - t0, 1)
    log.ran.append(step.key)
    mark_done(step, summary)


# -- the PPO matrix on Ray Tune ----------------------------------------------------------------------------


def ppo_cell_trial(config: dict, cells: dict, steps: dict) -> None:
    """One Tune trial: run the cell's PPO stage unless it finished with this config, then report its
    headline numbers. A retried trial (a lost node) starts the cell's folder over."""
    from ray import tune

    from karma_ray.rlhf.cli import run_ppo
    from karma_ray.rlhf.driver import CHECKPOINTS
    from karma_ray.rlhf.placement import OWNER_ENV

    name = config["cell"]
    step = steps[name]
    owner = os.environ[OWNER_ENV] = tune.get_context().get_trial_id()  # names this run's placement groups
    if not is_done(step):
        with _role_nodes(owner) as nodes:
            run_ppo(cells[name], step.folder, overwrite=True)
        # A cell is redone from its start when retried, never resumed from its DeepSpeed checkpoints
        # (weights and Adam moments: 2.1 GB a cell on SmolLM2-135M, 25 GB over a 12-cell matrix):
        # once the policy is exported they are dead weight on the disk.
        shutil.rmtree(step.folder / CHECKPOINTS, ignore_errors=True)
        mark_done(step, ppo_summary(step.folder) | _node() | {"role_nodes": sorted(nodes)})
    tune.report(_marker_summary(step))


@contextlib.contextmanager
def _role_nodes(owner: str, every_s: float = 2.0) -> Iterator[set[str]]:
    """The nodes hosting the bundles of this trial's placement groups (its PPO roles), sampled
    while the run lasts: where a cell ran, beyond the node of the trial's own driver."""
    import threading

    from ray.util import placement_group_table

    nodes: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                for info in placement_group_table().values():
                    if (info.get("name") or "").endswith(f"-{owner}") and info.get("state") == "CREATED":
                        nodes.update(n[:12] for n in (info.get("bundles_to_node_id") or {}).values() if n)
            except Exception:  # noqa: BLE001 - a display record only; the GCS may be busy
                pass
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield nodes
    finally:
        stop.set()
        thread.join(timeout=5)


def _marker_summary(step: Step) -> dict:
    return json.loads((step.folder / MARKER).read_text()).get("summary", {})


def _node() -> dict:
    """Where the trial ran: the node's id (several nodes of one machine share an IP) and IP."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id()[:12], "node_ip": ray.util.get_node_ip_address()}


def ppo_summary(folder: Path) -> dict:
    """First and last reward and KL of a PPO run, with the standard error of the reward over its last iterations."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        return {"iterations": 0}
    out = {"iterations": len(rows), "kl_last": rows[-1].get("kl"), "kl_max": max(r.get("kl", float("nan")) for r in rows)}
    for key in ("reward", "gold"):
        values = [r[f"{key}_mean"] for r in rows if isinstance(r.get(f"{key}_mean"), (int, float)) and math.isfinite(r[f"{key}_mean"])]
        if not values:
            continue
        tail = values[-max(2, len(values) // 4):]
        mean = sum(tail) / len(tail)
        sd = math.sqrt(sum((x - mean) ** 2 for x in tail) / max(1, len(tail) - 1))
        out |= {f"{key}_first": values[0], f"{key}_last": values[-1], f"{key}_tail_mean": mean,
                f"{key}_tail_se": sd / math.sqrt(len(tail))}
    return out


def run_ppo_matrix(plan: ExperimentPlan, log: StageLog) -> dict[str, dict]:
    """All cells as one Tune experiment; returns cell -> summary (or its error)."""
    import ray
    from ray import tune

    from karma_ray.console import stage_bar, tune_progress
    from karma_ray.rlhf.placement import plan_placement, release_placement_groups_callback
    from karma_ray.rlhf.roles import role_requests

    steps = {c.name: plan.steps[f"ppo/{c.name}"] for c in plan.cells}
    todo = [c for c in plan.cells if not is_done(steps[c.name])]
    log.skipped += [f"ppo/{c.name}" for c in plan.cells if c not in todo]
    outcomes: dict[str, dict] = {}
    for c in plan.cells:
        if c not in todo:
            summary = _marker_summary(steps[c.name])
            outcomes[c.name] = {"summary": {k: v for k, v in summary.items() if k in _SUMMARY_KEYS},
                                "node": summary.get("node") or summary.get("node_ip"),
                                "role_nodes": summary.get("role_nodes", []), "error": ""}
    if outcomes:
        say(f"6 ppo: {len(outcomes)} of {len(plan.cells)} cells finished with this config, skipped")
    if not todo:
        return outcomes
    # As many trials at once as the cluster holds: each cell's roles reserve their own placement groups.
    need = max(plan_placement(plan.ppo[c.name].placement.mode, plan.ppo[c.name].placement.strategy,
                              role_requests(plan.ppo[c.name])).total().get("CPU", 0.0) for c in todo)
    have = ray.cluster_resources().get("CPU", 0.0)
    concurrent = max(1, int(have // (need + plan.cfg.ppo.trial_cpus)))
    say(f"6 ppo: {len(todo)} cells on Ray Tune, {concurrent} at once ({need:g} CPUs each, cluster {have:g}) -> {plan.output / 'ppo'}")
    t0 = time.monotonic()
    trainable = tune.with_resources(
        tune.with_parameters(ppo_cell_trial, cells={c.name: plan.ppo[c.name] for c in todo}, steps=steps),
        {"cpu": plan.cfg.ppo.trial_cpus})
    retries: dict[str, list[str]] = {}
    with stage_bar("ppo matrix", total=len(todo), unit="cell") as bar:
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search([c.name for c in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(storage_path=str((plan.output / "tune").resolve()), name="ppo_matrix",
                                      failure_config=tune.FailureConfig(max_failures=plan.cfg.ppo.max_failures),
                                      verbose=0, callbacks=[tune_progress(bar), release_placement_groups_callback(),
                                                                 _recorded_retries(retries)]),
        )
        grid = tuner.fit()
    for result in grid:
        name = result.config["cell"]
        m = result.metrics or {}
        outcomes[name] = {"summary": {k: v for k, v in m.items() if k in _SUMMARY_KEYS},
                          "node": m.get("node") or m.get("node_ip"), "role_nodes": m.get("role_nodes", []),
                          "error": repr(result.error) if result.error else "",
                          "retried_after": retries.get(name, [])}
        log.ran.append(f"ppo/{name}")
    log.wall_s["ppo"] = round(time.monotonic() - t0, 1)
    return outcomes


def _recorded_retries(into: dict[str, list[str]]) -> Any:
    """A Tune callback noting each failed attempt of a cell that Tune retries (cell -> its errors)."""
    from ray import tune

    class RecordRetries(tune.Callback):
        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            into.setdefault(trial.config["cell"], []).append(str(getattr(trial, "error_file", "") or "failed"))

    return RecordRetries()


_SUMMARY_KEYS = ("iterations", "reward_first", "reward_last", "reward_tail_mean", "reward_tail_se", "gold_first", "gold_last",
                 "gold_tail_mean", "gold_tail_se", "kl_last", "kl_max")


# -- the stage ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentResult:
    output: Path
    results_path: Path  # results.json
    report_html: Path
    report_md: Path
    ran: list[str]  # stage keys run by this call
    skipped: list[str]  # stage keys finished before (same config), not rerun
    failed: list[str]  # PPO cells that failed (their errors are in the report)
    results: dict = field(repr=False)


def _is_experiment_output(folder: Path) -> bool:
    return (folder / "experiment.yaml").exists() or (folder / MARKER).exists()


def run_experiment(cfg: ExperimentConfig, output: str | os.PathLike, *, resume: bool = True,
                   overwrite: bool = False) -> ExperimentResult:
    """Run (or continue) the study in `output`. A folder holding an earlier run of an experiment is
    continued, finished stages skipped (`resume`, the default); `overwrite` starts it over."""
    from karma_ray.console import quiet_ray
    from karma_ray.ray_utils import init_ray, session_log_dir

    start = time.monotonic()
    plan = plan_experiment(cfg, output)  # every config built and validated: nothing has been written yet
    out = plan.output
    if out.is_dir() and any(out.iterdir()) and not _is_experiment_output(out) and not overwrite:
        raise OutputExistsError(f"{out} holds files that are not an experiment's; choose a new --output")
    out = claim_output(out, STAGE, resume=resume and not overwrite, overwrite=overwrite, recognizes=_is_experiment_output)
    save_resolved(cfg, out, "experiment.yaml")
    digest = config_digest(cfg)
    begin_stage(out, STAGE, digest)
    log = StageLog()
    steps = plan.steps

    # One cluster for every stage. Its dashboard (on cfg.ray.dashboard_host, loopback by default) is on:
    # Ray Train frees a finished trial's placement group through the State API, which needs it.
    # Workers' output and the driver's Ray records go to files (console.quiet_ray): the console shows
    # one line and one bar per stage.
    import ray
    import ray.data  # noqa: F401 - Ray and Ray Data attach console handlers on import: quiet them after it

    ray_log = quiet_ray(out / "logs")
    import torch

    if not torch.cuda.is_available():
        # DeepSpeed warns at import when it has to detect the accelerator; name it (what our workers do)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars of every save: the stage's bar is enough
    init_ray(replace(cfg.ray, include_dashboard=True, log_to_driver=False))
    quiet_ray(out / "logs")

    say(f"Ray {ray.__version__}: {ray.cluster_resources().get('CPU', 0):g} CPUs; Ray's logs: {ray_log} and {session_log_dir()}")

    if cfg.corpus.synthetic_comments:
        def synth() -> dict:
            from karma_ray.data.synth import write_synthetic_corpus

            _fresh(steps["corpus"].folder)
            s = write_synthetic_corpus(steps["corpus"].folder, cfg.corpus.synthetic_comments, seed=cfg.corpus.synthetic_seed)
            return {"comments": s.comments_written}
        cached(steps["corpus"], log, f"1 corpus: {cfg.corpus.synthetic_comments:,} synthetic comments", synth)

    def prepare() -> dict:
        from karma_ray.data.prepare import run_prepare

        m = run_prepare(plan.prepare, steps["prepare"].folder, inputs=plan.corpus_inputs, overwrite=True).manifest
        return {"examples": m.examples_written, "read": m.records_read}
    cached(steps["prepare"], log, "2 prepare on Ray Data", prepare)

    if "tiny" in (cfg.models.policy, cfg.models.rm_backbone):
        def models() -> dict:
            from karma_ray.models.tiny import build_corpus_models

            _fresh(steps["models"].folder)
            policy, backbone = build_corpus_models(steps["prepare"].folder, steps["models"].folder, cfg.models.tiny_vocab_size)
            return {"policy": str(policy), "rm_backbone": str(backbone)}
        tiny = [what for what, value in (("Llama policy", cfg.models.policy), ("BERT backbone", cfg.models.rm_backbone)) if value == "tiny"]
        cached(steps["models"], log, f"3 models: corpus tokenizer, tiny {' and '.join(tiny)}", models)

    def rm() -> dict:
        from karma_ray.reward.sweep import run_sweep_rm

        sweep = run_sweep_rm(plan.rm, steps["rm"].folder, data=steps["prepare"].folder, overwrite=True)
        missing = [v for v in cfg.rm.variants if v not in sweep.best]
        if missing:
            raise RuntimeError(f"reward-model trials of {missing} produced no model; see {sweep.results_csv}")
        return {v: b.test.spearman for v, b in sweep.best.items()}
    cached(steps["rm"], log, f"4 rm: {len(cfg.rm.variants)} variants on Ray Tune ({', '.join(cfg.rm.variants)})", rm)

    if plan.sft is not None:
        def sft() -> dict:
            from karma_ray.sft.train import run_sft

            r = run_sft(plan.sft, steps["sft"].folder, data=steps["prepare"].folder, overwrite=True)
            return {"steps": r.steps, "val_loss_before": r.val_loss_before, "val_loss_after": r.val_loss_after}
        cached(steps["sft"], log, "5 sft: the exposure policy", sft)

    outcomes = run_ppo_matrix(plan, log)
    failed = [name for name, o in outcomes.items() if o["error"]]
    lineage = check_lineage(plan)

    eval_models = [m for m in plan.eval_models if m.partition("=")[0] not in failed]

    def evaluate() -> dict:
        from karma_ray.eval.run import run_eval

        r = run_eval(plan.eval, steps["eval"].folder, models=eval_models, overwrite=True)
        return {"failures": len(r.failures)}
    eval_step = steps["eval"]
    if failed:  # the evaluation covers the cells that ran: its digest says which
        eval_step = replace(eval_step, digest=config_digest({"failed": failed}, [eval_step.digest]))
    cached(eval_step, log, f"7 eval: {len(eval_models)} policies against the base", evaluate)

    from karma_ray.experiment.report import build_results, write_report

    say("8 report")
    results = build_results(plan, outcomes, lineage, log)
    results["wall_s"] = round(time.monotonic() - start, 1)
    results_path = out / "results.json"
    results_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    html, md = write_report(results, out)
    finish_stage(out, STAGE, digest, {"ran": len(log.ran), "skipped": len(log.skipped), "failed": failed})
    say(f"done in {results['wall_s']:.0f} s: {len(log.ran)} stages run, {len(log.skipped)} skipped as finished, "
        f"{len(failed)} cells failed. Report: {html}")
    return ExperimentResult(out, results_path, html, md, log.ran, log.skipped, failed, results)


def _fresh(folder: Path) -> None:
    """A stage that writes plain files (no stage record of its own) starts from an empty folder."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def check_lineage(plan: ExperimentPlan) -> dict:
    """Proof by lineage that each arm is what it says: every base-arm policy started PPO from a model that
    never saw the corpus (`assert_no_exposure` on its lineage chain), every exposure-arm one from the SFT
    model that did. Whether PPO's own prompts were Reddit text is stated in `prompts`."""
    from karma_ray.data.corpus import MANIFEST_FILE
    from karma_ray.lineage import ExposureError, assert_no_exposure, corpora_seen, file_sha256

    manifest = plan.output / "prepared" / MANIFEST_FILE
    sha = file_sha256(manifest)
    out: dict = {"prompts": plan.prompts_note, "prompts_source": "corpus" if plan.cfg.ppo.prompts == "corpus" else "file",
                 "cells": {}}
    for cell in plan.cells:
        start = plan.ppo[cell.name].model.policy
        if cell.condition == "base":
            try:
                assert_no_exposure(start, manifest)
                ok, saw = True, False
            except ExposureError:
                ok, saw = False, True
        else:
            saw = sha in corpora_seen(start)
            ok = saw
        out["cells"][cell.name] = {"condition": cell.condition, "start_policy": str(start), "start_saw_corpus": saw, "ok": ok}
    out["ok"] = all(c["ok"] for c in out["cells"].values())
    return out


__all__ = ["Cell", "ExperimentError", "ExperimentPlan", "ExperimentResult", "check_lineage", "is_done", "plan_experiment",
           "run_experiment"]
