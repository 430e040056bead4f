"""`karma ppo --config configs/ppo/NAME.yaml --output DIR [--resume] [key=value ...]`

Everything checkable is checked before Ray starts (exit 2): config keys/types/ranges, cross-field
rules, the policy/reward/prompt paths. `--resume` continues from DIR's newest complete checkpoint.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from karma_ray.cli import parse_stage_args, run_stage
from karma_ray.config import ConfigError
from karma_ray.rlhf.config import PPOConfig
from karma_ray.stage import OutputExistsError, begin_stage, claim_output, config_digest, finish_stage


_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def model_reachable(path: str) -> bool:
    """A local folder, or a hub id that from_pretrained can resolve (cached when offline)."""
    from karma_ray.models.packaged import is_packaged

    if is_packaged(path) or Path(path).expanduser().exists():  # check_paths checked a package is installed
        return True
    if path.startswith((".", "/", "~")) or not _HUB_ID.match(path):
        return False
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(path, "config.json"), str)
    return True


def check_paths(cfg: PPOConfig) -> None:
    """Local model folders must exist (hub ids `org/name` are left to from_pretrained)."""
    from karma_ray.models.packaged import PackagedModelError, check_resolvable
    from karma_ray.rlhf.prompts import check_prompt_source
    from karma_ray.rlhf.rules import is_rule, make_rule

    for key, path in (("model.policy", cfg.model.policy), ("model.reference", cfg.model.reference), ("model.critic", cfg.model.critic), ("model.tokenizer", cfg.model.tokenizer)):
        try:
            check_resolvable(path, key)
        except PackagedModelError as exc:
            raise ConfigError(str(exc)) from None
        if path and not model_reachable(path):
            raise ConfigError(f"{key}: {path} is neither a local folder nor a reachable hub id (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')})")
    for i, spec in enumerate(cfg.reward.models):
        if is_rule(spec.path):
            try:
                make_rule(spec.path)
            except ValueError as exc:
                raise ConfigError(f"reward.models[{i}].path: {exc}") from None
        elif not Path(spec.path).is_dir():
            raise ConfigError(f"reward.models[{i}].path: {spec.path} is not a reward-model folder")
    try:
        check_prompt_source(cfg.prompts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _parser(prog: str, description: str, resume: bool) -> argparse.ArgumentParser:
    """The command line of `karma ppo` (with `resume`) and `karma sweep-ppo`."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("items", nargs="*", help="key=value config overrides")
    p.add_argument("--config", "-c", help="YAML config (see configs/ppo/)")
    p.add_argument("--output", "-o", help="output directory")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --output")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing output directory")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    return p


def ppo_main(argv: Sequence[str]) -> int:
    p = _parser("karma ppo", "PPO against reward models on Ray actors.", resume=True)
    args = parse_stage_args(p, argv, PPOConfig, overrides_only=True)
    if args is None:
        return 0
    # run_ppo checks paths, prompts and the output folder before any Ray work
    result = run_stage(p, PPOConfig, args.config, args.items, (OutputExistsError,),
                       lambda cfg: run_ppo(cfg, args.output, resume=args.resume, overwrite=args.overwrite))
    if result is None:
        return 2
    print(f"[karma ppo] done: {result.iterations} iterations this run; policy -> {result.policy_dir}; metrics -> {result.metrics_path}")
    if result.last:
        print(f"[karma ppo] last: reward_mean={result.last['reward_mean']:.4f} kl={result.last['kl']:.4f}")
    return 0


@dataclass(frozen=True)
class PPOResult:
    """What `run_ppo` wrote and its headline numbers."""

    output: Path
    policy_dir: Path  # the final policy as an HF folder, with lineage
    metrics_path: Path  # metrics.jsonl, one line per iteration
    iterations: int  # iterations run by this call (a resumed run counts only its own)
    last: dict  # the last iteration's metrics (empty when none ran)


def _is_ppo_output(folder: Path) -> bool:
    return (folder / "metrics.jsonl").exists() or (folder / "config.yaml").exists()


def run_ppo(cfg: PPOConfig, output: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
            on_iteration_end: Optional[Callable[[Any, dict], None]] = None) -> PPOResult:
    """The PPO stage: claim the folder, run the driver to the configured iterations, export the policy.
    `on_iteration_end(driver, metrics)` is called after every iteration (a Tune trial reports there)."""
    check_paths(cfg)  # before the claim: a bad config must not cost an --overwrite its folder
    out = claim_output(output, "ppo", resume=resume, overwrite=overwrite, recognizes=_is_ppo_output)
    from karma_ray.rlhf.driver import PPODriver  # imports Ray: only once the checks have passed

    digest = config_digest(cfg)
    begin_stage(out, "ppo", digest)
    driver = PPODriver(cfg, out, resume=resume)
    try:
        history = driver.fit(on_iteration_end)
        final = driver.export_policy()
    finally:
        driver.shutdown()
    last = dict(history[-1]) if history else {}
    finish_stage(out, "ppo", digest, {k: last[k] for k in ("reward_mean", "kl") if k in last})
    return PPOResult(out, Path(final), out / "metrics.jsonl", len(history), last)


def sweep_ppo_main(argv: Sequence[str]) -> int:
    from karma_ray.rlhf.sweep import SweepPPOConfig, plan_trials, run_sweep_ppo

    p = _parser("karma sweep-ppo", "Ray Tune over PPO settings (the KL coefficient), judged by the "
                "in-training evaluation, with ASHA early stopping.", resume=False)
    args = parse_stage_args(p, argv, SweepPPOConfig, overrides_only=True)
    if args is None:
        return 0

    def sweep_ppo(cfg: SweepPPOConfig) -> Any:  # load_config built and validated every trial's PPO config
        for trial in plan_trials(cfg):
            check_paths(trial.ppo)
        return run_sweep_ppo(cfg, args.output, overwrite=args.overwrite)

    sweep = run_stage(p, SweepPPOConfig, args.config, args.items, (OutputExistsError,), sweep_ppo)
    if sweep is None:
        return 2
    print((sweep.output / "summary.md").read_text())
    print(f"results: {sweep.results_csv}  best config: {sweep.best_config}")
    return 0 if sweep.best is not None else 1
