"""`karma eval --config configs/eval/NAME.yaml --model PATH_OR_ID [--model ...] --output DIR [key=value ...]`."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from karma_ray.config import ConfigError, describe, load_config


def eval_main(argv: Sequence[str]) -> int:
    from karma_ray.eval.config import EvalConfig

    p = argparse.ArgumentParser(prog="karma eval", description="Evaluate checkpoints with confidence intervals and paired tests.")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. tasks.limit=50)")
    p.add_argument("--config", "-c", help="YAML config (see configs/eval/)")
    p.add_argument("--model", "-m", action="append", default=[],
                   help="checkpoint to evaluate, as PATH or NAME=PATH: an HF folder, a hub id or packaged:ID; "
                        "repeat it; the first is the baseline of the comparisons")
    p.add_argument("--output", "-o", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing eval output")
    p.add_argument("--list-tasks", action="store_true", help="list the task specs and exit")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    args = p.parse_args(argv)
    if args.help_config:
        print("\n".join(describe(EvalConfig)))
        return 0
    from karma_ray.eval.tasks import TaskError, available_tasks, load_task_specs

    if args.list_tasks:
        for spec in load_task_specs(sorted(available_tasks())):
            print(f"{spec.task:20s} {spec.group:12s} {spec.description}")
        return 0
    if not args.output or not args.model:
        p.error("--output and at least one --model are required")
    from karma_ray.eval.loaders import DatasetError
    from karma_ray.eval.run import EvalInputError, run_eval
    from karma_ray.stage import OutputExistsError

    try:
        cfg = load_config(EvalConfig, args.config, args.overrides)
        result = run_eval(cfg, args.output, models=args.model, overwrite=args.overwrite)
    except (ConfigError, TaskError, DatasetError, EvalInputError, OutputExistsError) as exc:
        print(f"karma eval: error: {exc}", file=sys.stderr)
        return 2
    for failure in result.failures:
        print(f"karma eval: {failure['task']} failed for {failure['model']}: {failure['error'].splitlines()[0]}", file=sys.stderr)
    print(result.report_html)
    return 1 if result.failures else 0
