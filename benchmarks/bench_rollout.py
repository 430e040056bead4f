"""Rollout generation speed: vLLM vs HF `generate` on the same random-init model, in the same run.

    python benchmarks/bench_rollout.py [--sizes tiny,100m] [--batch 64] [--prompt-len 32] [--new-tokens 128]
                                       [--cpus 2] [--workdir runs/bench_rollout]

For each size, a random-init Llama with the GPT-2 vocabulary (the real GPT-2 BPE from
../shared/data/tokenizers/gpt2; a small BPE when it is absent, which the output says) is saved like a
checkpoint, then each engine, in this process, with the same CPUs:
  1. starts (vLLM: engine start + logprobs warm-up; HF: load + a short warm-up generate),
  2. samples `batch` random prompts of `prompt_len` tokens, `new_tokens` tokens each at temperature 1
     (sampling logprobs included, as in PPO): tokens/s = generated tokens / wall time,
  3. loads the model's own weights again through `update_weights` (the per-iteration weight sync).
Prints tokens/s per engine and the vLLM / HF ratio (target >= 1.5x at ~100M parameters, batch >= 64,
>= 128 new tokens: the size where generation, not Python overhead, dominates). Results also go to
DIR/bench_rollout.json. `measure_generation` is what benchmarks/bench_ppo.py calls.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GPT2_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tokenizers" / "gpt2"

# name -> save_tiny_llama arguments. "100m": 101.8M parameters with the GPT-2 vocabulary
# (51.5M in the untied embedding + LM head, 50.3M in 12 layers of width 512).
SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2),  # head_dim 32: vLLM CPU has no kernel for 16
    "100m": dict(hidden_size=512, num_layers=12, num_heads=8, intermediate_size=2048),
}


def build_model(size: str, out_dir: Path) -> tuple[Path, str]:
    """Save a random-init Llama of `size` with the GPT-2 vocabulary; returns (folder, tokenizer name)."""
    from karma_ray.models.tiny import gpt2_tokenizer, save_tiny_llama, train_bpe_tokenizer

    if (GPT2_DIR / "gpt2_vocab.json").exists():
        tok, tok_name = gpt2_tokenizer(GPT2_DIR), "gpt2 (50,257)"
    else:
        tok = train_bpe_tokenizer(["the quick brown fox jumps over the lazy dog"] * 50, vocab_size=512)
        tok_name = f"small BPE ({len(tok)}; GPT-2 files not found)"
    folder = out_dir / f"llama-{size}"
    if not (folder / "config.json").exists():
        save_tiny_llama(folder, tok, **SIZES[size])
    return folder, tok_name


def count_parameters(model_dir: Path) -> int:
    import math

    from karma_ray.engines.weight_sync import checkpoint_tensor_index

    return sum(math.prod(shape) for _, shape in checkpoint_tensor_index(model_dir).values())


def random_prompts(batch: int, prompt_len: int, vocab: int, eos: int, seed: int) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=gen)
    ids[ids == eos] = (eos + 1) % vocab  # no EOS inside prompts
    return ids.tolist()


def checkpoint_buckets(model_dir: Path, bucket_mib: int) -> list[dict]:
    from safetensors.torch import load_file

    from karma_ray.engines.weight_sync import MIB, iter_buckets

    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return list(iter_buckets(state.items(), bucket_mib * MIB))


def _run_engine(engine_name: str, model_dir: Path, prompts, sampling, cfg, buckets, seed: int) -> dict:
    from karma_ray.engines.rollout import HFRollout, VLLMRollout
    from karma_ray.types import SamplingSettings

    start = time.monotonic()
    engine = (VLLMRollout if engine_name == "vllm" else HFRollout)(str(model_dir), cfg, seed=seed)
    if engine_name == "hf":  # vLLM warms up its logprobs path in the constructor
        engine.generate(prompts[:2], SamplingSettings(max_new_tokens=4, seed=seed))
    startup_s = time.monotonic() - start
    try:
        t0 = time.monotonic()
        gens = engine.generate(prompts, sampling)
        gen_s = time.monotonic() - t0
        tokens = sum(len(r) for r in gens.response_ids)
        t0 = time.monotonic()
        sync = engine.update_weights(*buckets)
        sync_s = time.monotonic() - t0
    finally:
        engine.close()
    return {
        "startup_s": round(startup_s, 2),
        "generate_s": round(gen_s, 6),
        "tokens": tokens,
        "finished": sum(gens.finished),
        "tokens_per_s": round(tokens / gen_s, 3),
        "sync_s": round(sync_s, 3),
        "sync_mib": round(sync.bytes / 2**20, 1),
    }


def measure_generation(
    model_dir: str | os.PathLike,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    engines: Sequence[str] = ("hf", "vllm"),
    cpus: int | None = None,
    seed: int = 0,
    bucket_mib: int = 256,
) -> dict:
    """Tokens/s of each engine on `batch` random prompts (one timed `generate` each, same process,
    same CPUs), the weight-sync time, and `ratio` = vLLM / HF tokens/s when both ran."""
    from karma_ray.models.hf import load_tokenizer
    from karma_ray.engines.config import RolloutConfig
    from karma_ray.types import SamplingSettings

    model_dir = Path(model_dir)
    cpus = cpus or len(os.sched_getaffinity(0))
    tok = load_tokenizer(model_dir)
    prompts = random_prompts(batch, prompt_len, len(tok), tok.eos_token_id, seed)
    sampling = SamplingSettings(max_new_tokens=new_tokens, temperature=1.0, seed=seed)
    buckets = checkpoint_buckets(model_dir, bucket_mib)
    # KV cache: batch x (prompt + response) positions fit with room to spare
    cfg = RolloutConfig(
        max_model_len=prompt_len + new_tokens, kv_cache_gib=2.0, cpus_per_engine=float(cpus), sync_bucket_mib=bucket_mib
    )
    out: dict = {
        "model": str(model_dir),
        "parameters": count_parameters(model_dir),
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "cpus": cpus,
    }
    for name in engines:
        out[name] = _run_engine(name, model_dir, prompts, sampling, cfg, buckets, seed)
        gc.collect()
    if "hf" in out and "vllm" in out:
        out["ratio"] = round(out["vllm"]["tokens_per_s"] / out["hf"]["tokens_per_s"], 4)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,100m", help=f"comma-separated model sizes: {', '.join(SIZES)}")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=None, help="CPUs for each engine (default: all this process may use)")
    parser.add_argument("--workdir", default="runs/bench_rollout")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes.split(","):
        if size not in SIZES:
            parser.error(f"unknown size {size!r} (choose from {', '.join(SIZES)})")
        model_dir, tok_name = build_model(size, workdir)
        res = measure_generation(model_dir, args.batch, args.prompt_len, args.new_tokens, cpus=args.cpus)
        res.update(size=size, tokenizer=tok_name)
        results.append(res)
        print(
            f"[{size}] {res['parameters'] / 1e6:.1f}M params, tokenizer {tok_name}, batch {res['batch']} x "
            f"{res['prompt_len']} prompt + {res['new_tokens']} new tokens, fp32, {res['cpus']} CPUs"
        )
        for name in ("hf", "vllm"):
            r = res.get(name)
            if r:
                print(
                    f"  {name:5s} {r['tokens_per_s']:8.1f} tok/s  ({r['tokens']} tokens in {r['generate_s']:.2f}s; "
                    f"start {r['startup_s']:.1f}s; weight update {r['sync_mib']} MiB in {r['sync_s']:.2f}s)"
                )
        if "ratio" in res:
            print(f"  vLLM / HF = {res['ratio']:.2f}x (target >= 1.5x at ~100M)")
        sys.stdout.flush()
    (workdir / "bench_rollout.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
