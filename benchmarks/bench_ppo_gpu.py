"""The PPO loop on one GPU at ~0.5B parameters: DeepSpeed ZeRO-2 MFU and weight-sync seconds.

    python benchmarks/bench_ppo_gpu.py [--size 0.5b] [--variants gae,rloo] [--iterations 8] [--warmup 2]
                                       [--tokenizer DIR] [--workdir runs/bench_ppo_gpu] [key=value ...]

Builds what configs/ppo/gpu-0.5b.yaml names (nothing can be downloaded): a random-init Llama
(~0.5B with the GPT-2 vocabulary: hidden 1024, 24 layers, 16 heads, MLP 4096), a text reward model
on a random-init encoder, and a prompt file; then runs the real driver (Ray actors, DeepSpeed,
colocated on the GPU) once per variant:

    gae    the full loop: policy + critic (both ZeRO-2) train concurrently on the one GPU
    rloo   critic-free (2 samples per prompt): the policy has the GPU to itself in the update,
           the cleaner figure for the policy's MFU

and prints, over the iterations after --warmup, seconds per phase, the policy's (and critic's) model
TFLOP/s and MFU (karma_ray.rlhf.perf: 6N + 12LdT FLOPs per real token, against the device's dense
bf16 peak), and the weight sync (seconds, MiB, buckets). The baseline, measured in the same run
after the variants: the same model trained by a plain torch loop in this process (no Ray, no
DeepSpeed, fused AdamW, one step per micro-batch, unpadded rows of the run's column count), so the
ratio policy TFLOP/s / baseline TFLOP/s says what the ZeRO-2 update costs over the model's own speed. Results: WORKDIR/bench_ppo_gpu.json and
each run's metrics.jsonl / curves.png / report.md under WORKDIR/run_VARIANT.

Without CUDA it runs the same code on CPU (float32, no GPU shares, --size tiny) as a smoke test;
MFU is then NaN (no known peak).
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

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "ppo" / "gpu-0.5b.yaml"
WORDS = (
    "the a cat dog tree house river sky blue green quick slow jump run eat sleep apple mountain happy sad "
    "tell me about why how what people think reply thread post comment karma vote funny true"
).split()

# name -> save_tiny_llama kwargs. 0.5b: 24 x (4 x 1024^2 + 3 x 1024 x 4096) + 2 x 50257 x 1024 = 506M.
SIZES = {
    "0.5b": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256),
}
VARIANTS = {
    "gae": [],
    "rloo": ["algo.estimator=rloo", "run.samples_per_prompt=2", "run.prompts_per_iteration={half}"],
    "gae_zero3": ["policy.deepspeed.zero_stage=3", "critic.deepspeed.zero_stage=3"],
}
CPU_OVERRIDES = [  # the smoke test on a CPU machine: same loop, float32, no GPU shares, small batches
    "model.dtype=float32",
    "policy.gpus_per_worker=0", "critic.gpus_per_worker=0", "reference.gpus=0",
    "rollout.gpus_per_engine=0", "reward.gpus_per_actor=0",
    "policy.cpus_per_worker=0.5", "critic.cpus_per_worker=0.25", "reference.cpus=0.25",
    "rollout.cpus_per_engine=0.5", "reward.cpus_per_actor=0.25",
    "ray.num_cpus=2", "ray.object_store_memory_gb=1.0",
    "run.prompts_per_iteration=32", "algo.minibatch_size=16", "rollout.max_new_tokens=16",
    "policy.micro_batch_size=16", "critic.micro_batch_size=16",
]


def build_inputs(workdir: Path, size: str, tokenizer_dir: str) -> None:
    """policy/, rm/ and prompts.jsonl under workdir (rebuilt only when missing)."""
    from karma_ray.models.tiny import gpt2_tokenizer, save_tiny_bert, save_tiny_llama
    from karma_ray.reward.inputs import TargetSpec
    from karma_ray.reward.model import RewardModelMeta, build_reward_model, save_reward_model

    tok = gpt2_tokenizer(tokenizer_dir)
    policy = workdir / "policy"
    if not (policy / "config.json").exists():
        save_tiny_llama(policy, tok, max_position_embeddings=1024, **SIZES[size])
    rm = workdir / "rm"
    if not (rm / "karma_rm.json").exists():
        encoder = save_tiny_bert(workdir / "rm_encoder", tok, hidden_size=256, num_layers=4, num_heads=4)
        meta = RewardModelMeta(variant="text", target=TargetSpec("log_score", 0.0, 1.0), max_length=256)
        model, rm_tok = build_reward_model(meta, str(encoder), seed=0)
        import torch

        with torch.no_grad():  # a head that spreads scores, not the near-zero init
            model.text_model.classifier.weight.normal_(0, 0.5)
        save_reward_model(rm, model, rm_tok, meta)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(16, 64))) for _ in range(4096)]
    (workdir / "prompts.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))


def run_variant(name: str, workdir: Path, overrides: list[str], iterations: int) -> tuple[list[dict], float, dict]:
    from karma_ray.config import load_config
    from karma_ray.rlhf.config import PPOConfig
    from karma_ray.rlhf.driver import PPODriver

    base = [
        f"model.policy={workdir / 'policy'}",
        f"reward.models=[{{path: 'rule:char_fraction:e', weight: 1.0}}, {{path: '{workdir / 'rm'}', weight: 0.1}}]",
        f"prompts.path={workdir / 'prompts.jsonl'}",
        f"run.iterations={iterations}",
    ]
    cfg = load_config(PPOConfig, CONFIG, base + overrides)
    half = max(1, cfg.run.prompts_per_iteration // 2)
    cfg = load_config(PPOConfig, CONFIG, base + overrides + [o.format(half=half) for o in VARIANTS[name]])
    out = workdir / f"run_{name}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    driver = PPODriver(cfg, out)
    setup_s = time.perf_counter() - start
    try:
        history = driver.fit()
    finally:
        driver.shutdown()
        import ray

        ray.shutdown()
    return history, setup_s, {"sequences_per_iteration": cfg.run.prompts_per_iteration * cfg.run.samples_per_prompt}


def plain_torch_baseline(workdir: Path, micro_batch_size: int, columns: int, response_tokens: int, steps: int = 6,
                         device: str = "cuda") -> dict:
    """TFLOP/s of forward + logprob loss + backward + fused AdamW on the policy in this process."""
    import torch

    from karma_ray.models.hf import load_causal_lm
    from karma_ray.rlhf.perf import FlopsModel, device_peak_flops, model_flops_utilization

    device = torch.device(device)
    on_gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    model = load_causal_lm(workdir / "policy", dtype="float32")
    flops_model = FlopsModel.of(model)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = model.to(device, dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=on_gpu)
    ids = torch.randint(0, model.config.vocab_size, (micro_batch_size, columns), device=device)  # (B, T)
    R = response_tokens

    def step() -> None:
        logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
        logp = torch.log_softmax(logits[:, -R - 1 : -1].float(), -1).gather(-1, ids[:, -R:, None]).squeeze(-1)
        (-logp.mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: kernels, allocator, optimizer state
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    flops = flops_model.train_flops(micro_batch_size * columns, columns)
    mfu = model_flops_utilization(flops, seconds, device_peak_flops(device, dtype))
    del model, optimizer
    if on_gpu:
        torch.cuda.empty_cache()
    return {"micro_batch_size": micro_batch_size, "columns": columns, "step_s": seconds,
            "tflops": flops / seconds / 1e12, "mfu": float("nan") if mfu is None else mfu}


def summarize(history: list[dict], warmup: int) -> dict:
    kept = history[warmup:] or history

    def mean(key: str) -> float:
        values = [m[key] for m in kept if isinstance(m.get(key), (int, float))]
        return sum(values) / len(values) if values else float("nan")

    keys = sorted({k for m in kept for k in m if k.startswith("time/")})
    out = {k: mean(k) for k in keys}
    for k in ("perf/policy_tflops", "perf/policy_mfu", "perf/critic_tflops", "perf/critic_mfu", "sync_seconds",
              "sync_gather_seconds", "sync_apply_seconds", "sync_mib", "sync_buckets", "tokens_per_s", "generate_tokens_per_s", "rollout_logprob_max_abs_diff",
              "response_length", "kl"):
        out[k] = mean(k)
    out["reward_first"] = history[0]["reward_mean"]
    out["reward_last"] = history[-1]["reward_mean"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="model size (default: 0.5b on CUDA, tiny on CPU)")
    p.add_argument("--variants", default="gae,rloo")
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tokenizer", default=str(REPO.parent / "shared" / "data" / "tokenizers" / "gpt2"))
    p.add_argument("--workdir", default="runs/bench_ppo_gpu")
    p.add_argument("overrides", nargs="*", help="dotted config overrides for every variant")
    args = p.parse_args(argv)

    import torch

    on_gpu = torch.cuda.is_available()
    size = args.size or ("0.5b" if on_gpu else "tiny")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    build_inputs(workdir, size, args.tokenizer)
    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    print(f"[bench_ppo_gpu] device {device}; {size} models built in {time.perf_counter() - start:.1f} s under {workdir}", flush=True)

    overrides = ([] if on_gpu else CPU_OVERRIDES) + list(args.overrides)
    results: dict = {"device": device, "size": size, "iterations": args.iterations, "warmup": args.warmup, "runs": {}}
    for name in [v for v in args.variants.split(",") if v]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
        history, setup_s, info = run_variant(name, workdir, overrides, args.iterations)
        summary = summarize(history, args.warmup)
        results["runs"][name] = {"setup_s": setup_s, **info, **summary}
        (workdir / "bench_ppo_gpu.json").write_text(json.dumps(results, indent=2, allow_nan=True))

    if on_gpu and results["runs"]:
        from karma_ray.config import load_config
        from karma_ray.models.hf import load_tokenizer
        from karma_ray.rlhf.config import PPOConfig

        from karma_ray.rlhf.prompts import load_prompts, tokenize_prompts

        cfg = load_config(PPOConfig, CONFIG, [f"model.policy={workdir / 'policy'}", f"prompts.path={workdir / 'prompts.jsonl'}"]
                          + list(args.overrides))
        tok = load_tokenizer(workdir / "policy")
        prompt_ids = tokenize_prompts(tok, [p.text for p in load_prompts(cfg.prompts)], cfg.prompts.max_prompt_tokens)
        columns = max(len(ids) for ids in prompt_ids) + cfg.rollout.max_new_tokens  # a batch's padded width
        base = plain_torch_baseline(workdir, cfg.policy.micro_batch_size, columns, cfg.rollout.max_new_tokens)
        results["plain_torch_baseline"] = base
        for run in results["runs"].values():
            run["policy_tflops_vs_plain_torch"] = run["perf/policy_tflops"] / base["tflops"]
        (workdir / "bench_ppo_gpu.json").write_text(json.dumps(results, indent=2, allow_nan=True))
        print(f"\n== baseline: plain torch update of the same policy, batch {base['micro_batch_size']} x {columns} columns: "
              f"{base['tflops']:.1f} TFLOP/s, MFU {base['mfu']:.3f}")

    print(f"\n== PPO on {device}, {size} policy, mean of iterations {args.warmup + 1}..{args.iterations}")
    names = list(results["runs"])
    rows = sorted({k for r in results["runs"].values() for k in r if k != "sequences_per_iteration"})
    print(f"{'':34s}" + "".join(f"{n:>12s}" for n in names))
    for k in rows:
        print(f"{k:34s}" + "".join(f"{results['runs'][n].get(k, float('nan')):12.4g}" for n in names))
    print(f"results: {workdir / 'bench_ppo_gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
