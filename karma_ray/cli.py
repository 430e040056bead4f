"""`karma <stage>`: parse the config and overrides, validate them, then call the stage's run function.

    karma synth   --output DIR --comments N [--seed S]
    karma prepare INPUT... --output DIR [--config FILE] [--overwrite] [key=value ...]
    karma train-rm --data PREPARED --output DIR [--config configs/rm/NAME.yaml] [key=value ...]
    karma sweep-rm --data PREPARED --output DIR [--config configs/rm/sweep_NAME.yaml] [key=value ...]
    karma sft      --data PREPARED --output DIR [--config configs/sft/NAME.yaml] [key=value ...]
    karma ppo      --config configs/ppo/NAME.yaml --output DIR [--resume] [key=value ...]
    karma sweep-ppo --config configs/ppo/sweep_NAME.yaml --output DIR [key=value ...]
    karma eval     --config configs/eval/NAME.yaml --model PATH [--model PATH ...] --output DIR [key=value ...]
    karma experiment --config configs/experiment/NAME.yaml --output DIR [--overwrite] [key=value ...]

Everything that can be checked is checked before Ray starts: config keys, types and ranges,
input paths and formats, the output directory.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

from karma_ray.config import ConfigError, PrepareConfig, describe, load_config

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional args -> (paths, overrides). `a.b=c` is an override unless such a path exists
    (Hive folders like `split=train` are paths)."""
    paths, overrides = [], []
    for a in args:
        (overrides if _OVERRIDE.match(a) and not os.path.exists(a) else paths).append(a)
    return paths, overrides


def parse_stage_args(p: argparse.ArgumentParser, argv: Sequence[str], config_cls: type,
                     required: Sequence[str] = ("output",), overrides_only: bool = False) -> Optional[argparse.Namespace]:
    """Parse a stage's command line (positionals and key=value may come before or after options).
    None when --help-config printed the config keys. A missing `required` flag is a usage error; so is,
    with `overrides_only`, a positional `items` that is not an override (`args.items` keeps the overrides)."""
    args = p.parse_intermixed_args(argv)
    if args.help_config:
        print("\n".join(describe(config_cls)))
        return None
    if overrides_only:
        paths, args.items = split_overrides(args.items)
        if paths:
            p.error(f"unexpected arguments {paths} (overrides look like key.path=value)")
    if not all(getattr(args, name) for name in required):
        p.error(" and ".join(f"--{name}" for name in required) + (" are" if len(required) > 1 else " is") + " required")
    return args


def run_stage(p: argparse.ArgumentParser, config_cls: type, config: Optional[str], overrides: Sequence[str],
              errors: tuple[type[Exception], ...], run: Callable[[Any], Any]) -> Any:
    """`run(cfg)` on the loaded config; None after printing a config error or one of `errors` (the
    inputs, the output folder: the stage checks them before Ray starts), which exits 2."""
    try:
        return run(load_config(config_cls, config, overrides))
    except (ConfigError, *errors) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return None


def _cmd_prepare(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="karma prepare", description="Reddit dumps -> reward-model examples and pairs (Ray Data).")
    p.add_argument("items", nargs="*", help="input paths (files, folders, globs) and key=value config overrides")
    p.add_argument("--output", "-o", help="output directory")
    p.add_argument("--config", "-c", help="YAML config (see configs/data/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepare output")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    args = parse_stage_args(p, argv, PrepareConfig)
    if args is None:
        return 0
    inputs, overrides = split_overrides(args.items)
    from karma_ray.data.prepare import render_summary, run_prepare
    from karma_ray.data.sources import InputError
    from karma_ray.stage import OutputExistsError

    # run_prepare checks the inputs and the output folder before Ray starts
    prepared = run_stage(p, PrepareConfig, args.config, overrides, (InputError, OutputExistsError),
                         lambda cfg: run_prepare(cfg, args.output, inputs=inputs, overwrite=args.overwrite))
    if prepared is None:
        return 2
    print(render_summary(prepared.manifest, prepared.output))
    return 0 if prepared.manifest.invariant_holds else 1


def _cmd_synth(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="karma synth", description="Write a synthetic Pushshift-format corpus with planted signals.")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--comments", "-n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--months", type=int, default=None, help="monthly files to spread comments over")
    args = p.parse_args(argv)
    if args.comments < 1:
        p.error("--comments must be >= 1")
    from karma_ray.data.synth import write_synthetic_corpus

    summary = write_synthetic_corpus(args.output, args.comments, seed=args.seed, n_months=args.months)
    print(f"wrote {summary.comments_written:,} comments and {summary.submissions_written:,} submissions to {args.output}")
    for f in summary.files:
        print(f"  {f}")
    return 0


# Stages living in their own packages are registered as "module:function" and imported only when
# run, so `karma --help` stays instant and `import karma_ray.cli` pulls in nothing heavy. Each
# function takes argv and returns an exit code; config errors exit 2 before Ray starts.
COMMANDS = {
    "prepare": _cmd_prepare,
    "synth": _cmd_synth,
    "train-rm": "karma_ray.reward.cli:train_rm_main",
    "sweep-rm": "karma_ray.reward.cli:sweep_rm_main",
    "sft": "karma_ray.sft.cli:sft_main",
    "ppo": "karma_ray.rlhf.cli:ppo_main",
    "sweep-ppo": "karma_ray.rlhf.cli:sweep_ppo_main",
    "eval": "karma_ray.eval.cli:eval_main",
    "experiment": "karma_ray.experiment.cli:experiment_main",
}


def _resolve(command):
    if callable(command):
        return command
    module, _, name = command.partition(":")
    import importlib

    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands: " + ", ".join(COMMANDS))
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"karma: unknown command '{cmd}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return _resolve(COMMANDS[cmd])(rest)


if __name__ == "__main__":
    sys.exit(main())
