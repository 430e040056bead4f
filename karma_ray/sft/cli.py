"""`karma sft --data PREPARED --output DIR [--config configs/sft/NAME.yaml] [--resume] [key=value ...]`."""

from __future__ import annotations

import argparse
from typing import Sequence

from karma_ray.cli import parse_stage_args, run_stage
from karma_ray.sft.config import SFTConfig


def sft_main(argv: Sequence[str]) -> int:
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
    args = parse_stage_args(p, argv, SFTConfig, required=("data", "output"), overrides_only=True)
    if args is None:
        return 0

    from karma_ray.data.corpus import CorpusError
    from karma_ray.sft.data import SFTDataError
    from karma_ray.lineage import LineageError
    from karma_ray.sft.train import run_sft
    from karma_ray.stage import OutputExistsError

    # run_sft checks the output folder, manifest, model folder, splits and step count before Ray starts
    result = run_stage(p, SFTConfig, args.config, args.items, (CorpusError, SFTDataError, LineageError, OutputExistsError),
                       lambda cfg: run_sft(cfg, args.output, data=args.data, resume=args.resume, overwrite=args.overwrite))
    if result is None:
        return 2
    print(f"karma sft: {result.steps} steps on {result.num_examples:,} examples -> {result.model_dir}")
    return 0
