"""The PPO update's speed on a real pretrained policy: DeepSpeed ZeRO-2 against a plain torch loop,
fp32 against bf16, on the same model and batch, in one process and one run.

    python benchmarks/bench_update.py [--model packaged:smollm2-135m-instruct] [--sequences 16]
                                      [--prompt-tokens 64] [--response-tokens 24] [--micro-batch 4]
                                      [--repeats 3] [--threads 2] [--out benchmarks/results/bench_update.json]

Variants (each: one warm-up update, then --repeats timed updates of one minibatch of --sequences):

    plain_fp32        the baseline: torch AdamW, the same micro-batches, loss and accumulation
    plain_bf16_amp    the same under torch.autocast(bfloat16) (fp32 weights and optimizer)
    zero2_fp32        PolicyWorker (karma ppo's policy role): DeepSpeed ZeRO-2, world size 1, gloo
    zero2_bf16        the same with model.dtype=bfloat16 (DeepSpeed bf16: bf16 weights and
                      activations, fp32 master weights)
    zero0_fp32        (optional) PolicyWorker on a DeepSpeed engine without ZeRO partitioning

Reported: real tokens per second of the update (prompt + response, as PolicyWorker counts them),
median and range over the repeats, and each variant's ratio to plain_fp32 measured in the same run.
The bf16 variants also report the largest |logprob| difference from fp32 on the batch's response
tokens before any update: the price in the rollout sync check (vLLM samples in the policy's dtype).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def make_experience(vocab: int, sequences: int, prompt_tokens: int, response_tokens: int, seed: int = 0):
    """Random token rows of exactly prompt + response tokens (no padding: every row is real tokens)."""
    from karma_ray.types import Experience, pack_sequences

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, vocab, (prompt_tokens,), generator=g).tolist() for _ in range(sequences)]
    responses = [torch.randint(10, vocab, (response_tokens,), generator=g).tolist() for _ in range(sequences)]
    seqs = pack_sequences(prompts, responses, pad_id=0)
    mask = seqs.response_mask
    old = (-5.0 - torch.rand(mask.shape, generator=g)) * mask
    return Experience(sequences=seqs, old_logprobs=old, ref_logprobs=old.clone(),
                      advantages=torch.randn(mask.shape, generator=g) * mask)


def plain_update(model, optimizer, exp, micro_batch: int, autocast: bool) -> int:
    """One optimizer step over the minibatch in micro-batches (the policy role's loss and token-mean
    accumulation); returns the real tokens forwarded."""
    from karma_ray.algo import ppo_policy_loss
    from karma_ray.engines.forward import causal_lm_forward, row_chunks, select_rows
    from karma_ray.types import response_logprobs

    whole = exp.sequences.response_mask.sum()
    tokens = 0
    optimizer.zero_grad(set_to_none=True)
    for index in row_chunks(len(exp), micro_batch):
        seq = select_rows(exp.sequences, index)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = causal_lm_forward(model, seq)
        logp = response_logprobs(logits.float(), seq)
        # token-mean over the whole minibatch: each micro-batch's mean weighted by its share of tokens
        loss, _ = ppo_policy_loss(logp, exp.old_logprobs[index], exp.advantages[index], seq.response_mask)
        (loss * seq.response_mask.sum() / whole).backward()
        tokens += int(seq.attention_mask.sum())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return tokens


def time_plain(model_path: str, exp, micro_batch: int, repeats: int, autocast: bool) -> list[float]:
    from karma_ray.engines.forward import disable_dropout
    from karma_ray.models.hf import load_causal_lm

    model = load_causal_lm(model_path, dtype="float32")
    disable_dropout(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    plain_update(model, opt, exp, micro_batch, autocast)  # warm-up: kernels, allocator, optimizer state
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = plain_update(model, opt, exp, micro_batch, autocast)
        rates.append(tokens / (time.perf_counter() - t0))
    return rates


def time_policy_worker(model_path: str, exp, micro_batch: int, repeats: int, dtype: str, zero_stage: int) -> tuple[list[float], torch.Tensor]:
    from karma_ray.rlhf.config import AlgoConfig, ModelConfig, TrainerConfig
    from karma_ray.training.config import DeepSpeedConfig
    from karma_ray.rlhf.workers.distributed import free_port
    from karma_ray.rlhf.workers.policy import PolicyWorker

    # TrainerConfig is built directly (not validated): the config allows ZeRO 2|3 only, stage 0 here
    # measures DeepSpeed's engine without ZeRO partitioning.
    worker = PolicyWorker(ModelConfig(policy=model_path, dtype=dtype), TrainerConfig(micro_batch_size=micro_batch, lr=1e-6, deepspeed=DeepSpeedConfig(zero_stage=zero_stage)),
                          AlgoConfig(minibatch_size=len(exp), ppo_epochs=1, kl_placement="reward"),
                          0, 1, "127.0.0.1", free_port())
    logprobs = worker.logprobs(exp.sequences)  # before any update: the dtype's own numerics
    worker.train_step(exp)  # warm-up
    rates = []
    for _ in range(repeats):
        stats = worker.train_step(exp)
        rates.append(stats.update.train_tokens / stats.update.train_s)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()  # the next variant starts its own group
    return rates, logprobs


def summary(rates: list[float], baseline: float) -> dict:
    med = statistics.median(rates)
    return {"tokens_per_s_median": round(med, 1), "tokens_per_s_min": round(min(rates), 1),
            "tokens_per_s_max": round(max(rates), 1), "ratio_to_plain_fp32": round(med / baseline, 3)}


def run_one(name: str, args, workdir: Path) -> dict:
    """One variant in this process; writes its rates (and the policy's logprobs) under workdir."""
    torch.set_num_threads(args.threads)
    from karma_ray.models.hf import load_tokenizer

    exp = make_experience(len(load_tokenizer(args.model)), args.sequences, args.prompt_tokens, args.response_tokens)
    out: dict = {}
    if name.startswith("plain"):
        out["rates"] = time_plain(args.model, exp, args.micro_batch, args.repeats, autocast=name.endswith("amp"))
    else:
        stage = int(name.split("_")[0].removeprefix("zero"))
        out["rates"], logprobs = time_policy_worker(args.model, exp, args.micro_batch, args.repeats,
                                                    "bfloat16" if name.endswith("bf16") else "float32", stage)
        torch.save(logprobs, workdir / f"{name}_logprobs.pt")
        fp32 = workdir / "zero2_fp32_logprobs.pt"
        if name.endswith("bf16") and fp32.exists():
            mask = exp.sequences.response_mask
            out["max_abs_logprob_diff_vs_fp32"] = float(((logprobs - torch.load(fp32)).abs() * mask).max())
    (workdir / f"{name}.json").write_text(json.dumps(out))
    return out


def main(argv=None) -> int:
    import subprocess
    import tempfile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="packaged:smollm2-135m-instruct")
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--response-tokens", type=int, default=24)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="plain_fp32,plain_bf16_amp,zero2_fp32,zero2_bf16")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_update.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant in this process
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        run_one(args.one, args, Path(args.workdir))
        return 0
    variants = args.variants.split(",")
    if variants[0] != "plain_fp32":
        p.error("plain_fp32 (the baseline) must come first")
    results: dict = {"model": args.model, "sequences": args.sequences, "prompt_tokens": args.prompt_tokens,
                     "response_tokens": args.response_tokens, "micro_batch": args.micro_batch, "repeats": args.repeats,
                     "threads": args.threads, "cpu_flags_bf16": _bf16_flags(), "variants": {}}
    passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                   ("model", "sequences", "prompt_tokens", "response_tokens", "micro_batch", "repeats", "threads")]
    baseline = None
    with tempfile.TemporaryDirectory() as workdir:
        for name in variants:
            # Each variant in its own process: DeepSpeed keeps process-group state that a second
            # engine in the same process cannot reuse, and each variant gets a clean allocator.
            print(f"[bench_update] {name} ...", flush=True)
            subprocess.run([sys.executable, __file__, f"--one={name}", f"--workdir={workdir}", *passthrough], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            one = json.loads((Path(workdir) / f"{name}.json").read_text())
            rates = one.pop("rates")
            baseline = baseline or statistics.median(rates)
            results["variants"][name] = {**summary(rates, baseline), **one, "rates": [round(r, 1) for r in rates]}
            print(f"  {json.dumps(results['variants'][name])}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


def _bf16_flags() -> list[str]:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if "bf16" in f)


if __name__ == "__main__":
    sys.exit(main())
