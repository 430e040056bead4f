"""The demo job (`make demo`): the stages that exist so far, end to end, on a local Ray cluster.

    1. synth    a synthetic Pushshift-format corpus (RC/RS .zst, 2 GiB window, real quirks)
    2. prepare  Ray Data: dumps -> examples + pairs + manifest
    3. summary  counts, checked against the corpus's own ground truth

Runs the same way under `ray job submit --working-dir . -- python -m jobs.demo`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from karma_ray.config import PrepareConfig, load_config
from karma_ray.data.prepare import render_summary, run_prepare
from karma_ray.data.synth import write_synthetic_corpus

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "data" / "synthetic.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--comments", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.output)

    print(f"[1/3] synth: {args.comments:,} comments -> {out / 'corpus'}", flush=True)
    truth = write_synthetic_corpus(out / "corpus", args.comments, seed=args.seed)

    print(f"[2/3] prepare on Ray Data -> {out / 'prepared'}", flush=True)
    cfg = load_config(PrepareConfig, DEMO_CONFIG)
    manifest = run_prepare([str(out / "corpus")], str(out / "prepared"), cfg, overwrite=True)

    print("[3/3] summary", flush=True)
    print(render_summary(manifest, out / "prepared"))
    checks = {
        "comments read == comment lines written": manifest.records_read == truth.comments_written,
        "malformed == planted malformed lines": manifest.records_malformed == truth.malformed_lines,
        "examples == planted clean comments": manifest.examples_written == truth.clean_comments,
        "invariant read = malformed + dropped + examples": manifest.invariant_holds,
    }
    for name, ok in checks.items():
        print(f"  {'ok ' if ok else 'FAIL'} {name}")
    (out / "demo_checks.json").write_text(json.dumps(checks, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
