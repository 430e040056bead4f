"""`karma sft --data PREPARED --output DIR [--config configs/sft/NAME.yaml] [--resume] [key=value ...]`."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from karma_ray.config import ConfigError, describe, load_config
from karma_ray.sft.config import SFTConfig


def sft_main(argv: Sequence[str]) -> int:
    from karma_ray.cli import split_overrides

    p = argparse.ArgumentParser(
        prog="karma sft",
        description="Supervised fine-tuning of a causal LM on prepared (context, reply) examples (Ray Train); "
        "writes DIR/model, DIR/metrics.json and DIR/lineage.json.",
    )
    p.add_argument("items", nargs="*", help="key=value config overrides (e.g. train.max_steps=100)")
    p.add_argument("--data", "-d", help="a `karma prepare` output folder")
    p.add_argument("--output", "-o", help="run folder (must be empty unless --resume or --overwrite)")
    p.add_argument("--config", "-c", help="YAML config (see configs/sft/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --output (only a folder an earlier run wrote)")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    args = p.parse_intermixed_args(argv)
    if args.help_config:
        print("\n".join(describe(SFTConfig)))
        return 0
    paths, overrides = split_overrides(args.items)
    if paths:
        p.error(f"unexpected arguments {paths} (overrides look like key.path=value)")
    if not args.data or not args.output:
        p.error("--data and --output are required")

    from karma_ray.data.corpus import CorpusError
    from karma_ray.sft.data import SFTDataError
    from karma_ray.lineage import LineageError
    from karma_ray.sft.train import run_sft
    from karma_ray.stage import OutputExistsError

    try:
        cfg = load_config(SFTConfig, args.config, overrides)
        # run_sft checks the output folder, manifest, model folder, splits and step count before Ray starts
        result = run_sft(cfg, args.output, data=args.data, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, CorpusError, SFTDataError, LineageError, OutputExistsError) as exc:
        print(f"karma sft: error: {exc}", file=sys.stderr)
        return 2
    print(f"karma sft: {result.steps} steps on {result.num_examples:,} examples -> {result.model_dir}")
    return 0
