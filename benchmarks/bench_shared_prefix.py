"""Multiple-choice scoring with the shared prefix run once, against the same scorer running every
input whole, on the same requests in the same run (LogprobScorer.continuation_logprobs).

    python benchmarks/bench_shared_prefix.py [--model packaged:smollm2-135m-instruct] [--items 24]
                                             [--threads 2] [--repeats 2] [--out benchmarks/results/bench_shared_prefix.json]

Requests are lm-eval's, built by our ScoringLM: TruthfulQA MC1 (every input starts with the task's
6-shot primer) and MMLU (5-shot, the shots drawn per item: only the subject line is shared).
Reported per task: requests/s of both paths (the fastest of --repeats alternating runs), their
ratio, the largest |log-likelihood| difference and whether the greedy flags agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def requests(task: str, items: int, tokenizer) -> list[tuple[list[int], list[int]]]:
    """The (context ids, continuation ids) pairs `karma eval` scores for `items` items of `task`."""
    from karma_ray.config import load_config
    from karma_ray.eval.config import EvalConfig
    from karma_ray.eval.harness import ScoringLM, evaluate_multiple_choice
    from karma_ray.eval.run import load_task_data
    from karma_ray.eval.tasks import load_task_specs

    cfg = load_config(EvalConfig, None, [f"tasks.names=[{task}]", f"tasks.limit={items}", "tasks.limits=[]"])
    recorded: list = []
    lm = ScoringLM(tokenizer, lambda pairs: recorded.extend(pairs) or [(0.0, False)] * len(pairs), 2048)
    evaluate_multiple_choice(lm, [(d.spec, d.docs, d.fewshot) for d in load_task_data(cfg, load_task_specs([task]))], seed=0)
    return recorded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="packaged:smollm2-135m-instruct")
    ap.add_argument("--items", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per path (the fastest is reported)")
    ap.add_argument("--out", default="benchmarks/results/bench_shared_prefix.json")
    args = ap.parse_args()

    import karma_ray.engines.scorer as scorer_module
    from karma_ray.engines.scorer import LogprobScorer
    from karma_ray.models.hf import load_tokenizer
    from karma_ray.models.packaged import resolve_model

    path = resolve_model(args.model)
    scorer = LogprobScorer(path, num_threads=args.threads)
    tokenizer = load_tokenizer(path)
    shared = scorer_module.shared_prefix_length
    report = {"model": args.model, "items": args.items, "threads": args.threads, "repeats": args.repeats, "tasks": {}}
    for task in ("truthfulqa_mc1", "mmlu"):
        pairs = requests(task, args.items, tokenizer)
        timings, results = {"whole": [], "shared_prefix": []}, {}
        paths = [("whole", lambda rows: 0), ("shared_prefix", shared)]  # the baseline shares nothing
        for repeat in range(args.repeats):  # alternating, so a slow spell of the machine hits both
            for path_name, prefix_length in paths[::1 if repeat % 2 == 0 else -1]:
                scorer_module.shared_prefix_length = prefix_length
                start = time.perf_counter()
                results[path_name] = scorer.continuation_logprobs(pairs, max_length=2048)
                timings[path_name].append(time.perf_counter() - start)
        scorer_module.shared_prefix_length = shared
        timings = {k: min(v) for k, v in timings.items()}
        diff = max(abs(a[0] - b[0]) for a, b in zip(results["whole"], results["shared_prefix"]))
        row = {"requests": len(pairs), "shared_prefix_tokens": shared([c for c, _ in pairs]),
               "mean_input_tokens": sum(len(c) + len(x) - 1 for c, x in pairs) / len(pairs),
               "whole_requests_per_s": len(pairs) / timings["whole"],
               "shared_prefix_requests_per_s": len(pairs) / timings["shared_prefix"],
               "speedup": timings["whole"] / timings["shared_prefix"], "max_abs_loglik_diff": diff,
               "greedy_flags_equal": [a[1] for a in results["whole"]] == [b[1] for b in results["shared_prefix"]]}
        report["tasks"][task] = row
        print(f"{task}: {row['requests']} requests, {row['shared_prefix_tokens']} of ~{row['mean_input_tokens']:.0f} tokens shared: "
              f"{row['whole_requests_per_s']:.2f} -> {row['shared_prefix_requests_per_s']:.2f} req/s (x{row['speedup']:.2f}), "
              f"max |d loglik| {diff:.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(args.out)


if __name__ == "__main__":
    main()
