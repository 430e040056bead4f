"""TruthfulQA MC1/MC2 of a `karma eval` run against lm-evaluation-harness run directly: lm-eval's own
HF model (`lm_eval.models.huggingface.HFLM`) and its own truthfulqa_mc1/mc2 task files, on the same
items and model. Prints both per-task means and the largest per-item difference.

    python benchmarks/truthfulqa_vs_lm_eval.py runs/eval-smol [--model base]

Both sides score one request per forward (our `scoring.micro_batch_size=1` in the run's config is
not required: batching changes log-likelihoods by ~1e-5 in float32, which this script reports).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a karma eval output folder")
    p.add_argument("--model", default=None, help="model name in the run (default: the first)")
    args = p.parse_args()
    import lm_eval
    import pyarrow.parquet as pq
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from karma_ray.eval.loaders import default_data_root, load_split

    run = Path(args.run)
    results = json.loads((run / "results.json").read_text())
    model = next(m for m in results["models"] if args.model in (None, m["name"]))
    items = [r for r in pq.read_table(run / "items.parquet").to_pylist() if r["model"] == model["name"]]
    by_id = {d["id"]: d for d in load_split("truthfulqa", default_data_root(), "validation").docs}
    tmp = Path(tempfile.mkdtemp())
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "cache")
    report = {"model": model, "tasks": {}}
    lm = HFLM(pretrained=model["resolved"], backend="causal", batch_size=1, device="cpu", dtype="float32")
    builtin = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    for n in ("mc1", "mc2"):
        ours = [r for r in items if r["task"] == f"truthfulqa_{n}"]
        if not ours:
            continue
        with open(tmp / f"{n}.jsonl", "w") as f:
            for r in ours:
                d = by_id[r["item_id"]]
                mc1 = [d["mc1_choices"][d["mc1_gold"]]] + [c for i, c in enumerate(d["mc1_choices"]) if i != d["mc1_gold"]]
                order = sorted(range(len(d["mc2_labels"])), key=lambda i: -d["mc2_labels"][i])  # true first, as on the hub
                f.write(json.dumps({"question": d["question"],
                                    "mc1_targets": {"choices": mc1, "labels": [1] + [0] * (len(mc1) - 1)},
                                    "mc2_targets": {"choices": [d["mc2_choices"][i] for i in order],
                                                    "labels": [d["mc2_labels"][i] for i in order]}}) + "\n")
        (tmp / f"ref_{n}.yaml").write_text(
            f"include: {builtin}/truthfulqa_{n}.yaml\ntask: ref_{n}\ntag: null\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {tmp}/{n}.jsonl\n")
        loaded = TaskManager(include_path=str(tmp), include_defaults=False).load([f"ref_{n}"])
        res = evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True, verbosity="ERROR")
        theirs = [float(s["acc"]) for s in sorted(res["samples"][f"ref_{n}"], key=lambda s: s["doc_id"])]
        mine = [r["value"] for r in ours]
        report["tasks"][f"truthfulqa_{n}"] = {
            "items": len(mine), "karma_eval": sum(mine) / len(mine), "lm_eval_hflm": sum(theirs) / len(theirs),
            "max_abs_item_diff": max(abs(a - b) for a, b in zip(mine, theirs)),
            "abs_mean_diff": abs(sum(mine) / len(mine) - sum(theirs) / len(theirs))}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
