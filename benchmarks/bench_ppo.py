"""PPO iteration cost on the tiny CPU config: seconds per phase, Ray's orchestration overhead, and
rollout generation speed (vLLM vs HF generate), all measured in the same run.

    python benchmarks/bench_ppo.py [--iterations 10] [--warmup 2] [--sizes tiny,100m] [--workdir runs/bench_ppo]

1. Phases. configs/ppo/tiny.yaml (its models and prompts replaced by ones built here: a tiny
   random-init Llama with a corpus-style BPE vocabulary, a prompt file, the learnable rule reward
   `rule:char_fraction:e`) runs `--iterations` PPO iterations twice:
     ray    every role a Ray actor (DeepSpeed policy + critic, reference, reward, vLLM engine)
     local  the SAME worker classes called in this process (karma_ray.rlhf.local), no Ray at all
   Mean seconds per phase over the iterations after `--warmup`, and the orchestration overhead
   ray / local - 1 on the iteration time (target <= 10%). Ray runs phases 3-5 concurrently, local
   runs them one after the other, so the overhead can be negative.
2. Generation. benchmarks/bench_rollout.measure_generation: vLLM vs HF tokens/s on the same
   random-init model, batch 64, 32-token prompts, 128 new tokens, at ~100M parameters (target >= 1.5x)
   and at the tiny size.
3. GPU. ZeRO-2 MFU and weight-sync seconds at ~0.5B are measured by benchmarks/bench_ppo_gpu.py
   (configs/ppo/gpu-0.5b.yaml) on a CUDA machine; this script says where when it finds one.

Results: stdout and WORKDIR/bench_ppo.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parent.parent
WORDS = "the a cat dog tree house river sky blue green quick slow jump run eat sleep apple mountain happy sad tell me about why how what".split()


def build_inputs(workdir: Path) -> tuple[Path, Path]:
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(24)) for _ in range(600)]
    policy = workdir / "policy"
    if not (policy / "config.json").exists():
        tok = train_bpe_tokenizer(texts, vocab_size=2048)
        save_tiny_llama(policy, tok, hidden_size=64, num_layers=2, num_heads=2, max_position_embeddings=512)
    prompts = workdir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return policy, prompts


def run_backend(backend: str, policy: Path, prompts: Path, workdir: Path, iterations: int) -> list[dict]:
    from karma_ray.config import load_config
    from karma_ray.rlhf.config import PPOConfig
    from karma_ray.rlhf.driver import PPODriver

    cfg = load_config(
        PPOConfig,
        REPO / "configs" / "ppo" / "tiny.yaml",
        [
            f"model.policy={policy}",
            "reward.models=[{path: 'rule:char_fraction:e'}]",
            "prompts.source=file",
            f"prompts.path={prompts}",
            f"run.iterations={iterations}",
            "run.checkpoint_every=0",
            "run.tensorboard=false",
        ],
    )
    out = workdir / f"run_{backend}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    driver = PPODriver(cfg, out, backend=backend)
    setup_s = time.perf_counter() - start
    try:
        history = driver.fit()
    finally:
        driver.shutdown()
    for m in history:
        m["setup_s"] = setup_s
    return history


def phase_table(runs: dict[str, list[dict]], warmup: int) -> dict:
    table: dict[str, dict[str, float]] = {}
    for name, history in runs.items():
        kept = history[warmup:]
        keys = sorted({k for m in kept for k in m if k.startswith("time/")})
        table[name] = {k[5:]: sum(m.get(k, 0.0) for m in kept) / len(kept) for k in keys}
        table[name]["setup"] = history[0]["setup_s"]
        table[name]["tokens_per_s"] = sum(m["tokens_per_s"] for m in kept) / len(kept)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sizes", default="tiny,100m", help="generation benchmark sizes ('' to skip)")
    p.add_argument("--workdir", default="runs/bench_ppo")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    import torch

    policy, prompts = build_inputs(workdir)
    runs = {backend: run_backend(backend, policy, prompts, workdir, args.iterations) for backend in ("ray", "local")}
    import ray

    ray.shutdown()
    table = phase_table(runs, args.warmup)
    results["phases"] = table
    phases = sorted({k for t in table.values() for k in t if k not in ("setup", "tokens_per_s")})
    print(f"\n== PPO phases, configs/ppo/tiny.yaml, mean of iterations {args.warmup + 1}..{args.iterations} (seconds)")
    print(f"{'phase':32s} {'ray':>9s} {'local':>9s}")
    for k in phases + ["setup", "tokens_per_s"]:
        print(f"{k:32s} {table['ray'].get(k, float('nan')):9.3f} {table['local'].get(k, float('nan')):9.3f}")
    overhead = table["ray"]["iteration"] / table["local"]["iteration"] - 1
    results["orchestration_overhead"] = overhead
    print(f"Ray orchestration overhead on the iteration time: {overhead:+.1%} (target <= +10%)")

    sizes = [s for s in args.sizes.split(",") if s]
    if sizes:
        from bench_rollout import build_model, measure_generation

        results["generation"] = {}
        for size in sizes:
            model_dir, tok_name = build_model(size, workdir)
            r = measure_generation(model_dir, batch=64, prompt_len=32, new_tokens=128)
            results["generation"][size] = r
            print(f"\n== generation, {size} ({tok_name}), batch 64, 32-token prompts, 128 new tokens")
            for eng in ("hf", "vllm"):
                if isinstance(r.get(eng), dict):
                    print(f"  {eng:5s} {r[eng]['tokens_per_s']:9.1f} tokens/s")
            if "ratio" in r:
                print(f"  vLLM / HF = {r['ratio']:.2f}x (target >= 1.5x at ~100M)")

    results["gpu"] = (
        "CUDA available: python benchmarks/bench_ppo_gpu.py measures ZeRO-2 MFU and weight-sync seconds at ~0.5B"
        if torch.cuda.is_available()
        else "no GPU on this machine: ZeRO-2 MFU and GPU weight-sync seconds come from benchmarks/bench_ppo_gpu.py on a GPU"
    )
    print("\n" + results["gpu"])
    (workdir / "bench_ppo.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":  # vLLM spawns its engine core
    sys.exit(main())
