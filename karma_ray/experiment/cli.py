"""`karma experiment --config configs/experiment/NAME.yaml --output DIR [--overwrite] [key=value ...]`."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from karma_ray.config import ConfigError, describe, load_config


def experiment_main(argv: Sequence[str]) -> int:
    from karma_ray.experiment.config import ExperimentConfig

    p = argparse.ArgumentParser(prog="karma experiment", description="The KARMA study as one command: prepare, reward models "
                                "(Ray Tune), SFT, the PPO matrix (Ray Tune), evaluation, one report. A rerun into the same "
                                "--output skips every stage that finished with the same config.")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. ppo.seeds=[0,1])")
    p.add_argument("--config", "-c", help="YAML config (see configs/experiment/)")
    p.add_argument("--output", "-o", help="output folder (an earlier run of this experiment there is continued)")
    p.add_argument("--overwrite", action="store_true", help="start the experiment in --output over")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    args = p.parse_args(argv)
    if args.help_config:
        print("\n".join(describe(ExperimentConfig)))
        return 0
    if not args.output:
        p.error("--output is required")
    from karma_ray.experiment.run import ExperimentError, run_experiment
    from karma_ray.stage import OutputExistsError

    try:
        cfg = load_config(ExperimentConfig, args.config, args.overrides)
        result = run_experiment(cfg, args.output, overwrite=args.overwrite)
    except (ConfigError, ExperimentError, OutputExistsError) as exc:
        print(f"karma experiment: error: {exc}", file=sys.stderr)
        return 2
    print(result.report_html)
    return 1 if result.failed else 0
