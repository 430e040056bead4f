"""`karma train-rm` and `karma sweep-rm` (registered in karma_ray/cli.py).

    karma train-rm --data PREPARED --output DIR [--config configs/rm/NAME.yaml] [--resume] [key=value ...]
    karma sweep-rm --data PREPARED --output DIR [--config configs/rm/sweep_NAME.yaml] [key=value ...]

Config, input and output-folder errors exit 2 before Ray starts.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Iterator, Sequence

from karma_ray.cli import parse_stage_args, run_stage


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. train.lr=1e-4)")
    p.add_argument("--data", "-d", help="prepared corpus folder (output of `karma prepare`)")
    p.add_argument("--output", "-o", help="output folder")
    p.add_argument("--config", "-c", help="YAML config (see configs/rm/)")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    return p


def train_rm_main(argv: Sequence[str]) -> int:
    from karma_ray.reward.config import RewardModelConfig

    p = _parser("karma train-rm", "Train a karma reward model with Ray Train (TorchTrainer).")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in --output")
    args = parse_stage_args(p, argv, RewardModelConfig, required=("data", "output"))
    if args is None:
        return 0
    from karma_ray.data.corpus import CorpusError
    from karma_ray.reward.train import run_train_rm
    from karma_ray.stage import OutputExistsError

    with _ray_started_here_is_shut_down():
        # run_train_rm checks the corpus and the output folder before Ray starts
        rm = run_stage(p, RewardModelConfig, args.config, args.overrides, (CorpusError, OutputExistsError),
                       lambda cfg: run_train_rm(cfg, args.output, data=args.data, resume=args.resume, overwrite=args.overwrite))
    if rm is None:
        return 2
    print(f"karma train-rm: {rm.variant}, exported epoch {rm.exported_epoch}")
    print(f"  val:  {rm.val.headline()}")
    print(f"  test: {rm.test.headline()}")
    print(f"model: {rm.model_dir}  metrics: {rm.metrics_path}")
    return 0


def sweep_rm_main(argv: Sequence[str]) -> int:
    from karma_ray.reward.config import SweepConfig

    p = _parser("karma sweep-rm", "Ray Tune sweep over reward-model variant x loss x learning rate (ASHA).")
    p.add_argument("--overwrite", action="store_true", help="replace a previous sweep in --output")
    args = parse_stage_args(p, argv, SweepConfig, required=("data", "output"))
    if args is None:
        return 0
    from karma_ray.data.corpus import CorpusError
    from karma_ray.reward.sweep import render_table, run_sweep_rm
    from karma_ray.stage import OutputExistsError

    with _ray_started_here_is_shut_down():
        # run_sweep_rm checks the corpus and the output folder before Ray starts
        sweep = run_stage(p, SweepConfig, args.config, args.overrides, (CorpusError, OutputExistsError),
                          lambda cfg: run_sweep_rm(cfg, args.output, data=args.data, overwrite=args.overwrite))
    if sweep is None:
        return 2
    print(render_table(sweep))
    print(f"results: {sweep.results_csv}  best models: {sweep.output / 'best'}/<variant>")
    return 0


@contextlib.contextmanager
def _ray_started_here_is_shut_down() -> Iterator[None]:
    """On exit (error or not), shut down a Ray cluster the body started; leave one we joined (a test
    session's, a notebook's) alone."""

    def running() -> bool:
        return "ray" in sys.modules and sys.modules["ray"].is_initialized()

    was_running = running()
    try:
        yield
    finally:
        if not was_running and running():
            sys.modules["ray"].shutdown()
