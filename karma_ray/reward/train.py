"""`karma train-rm`: one Ray Train TorchTrainer run, data-parallel over N workers.

Driver (`run_train_rm`): TRAIN statistics -> Ray Datasets -> TorchTrainer.fit() -> export the chosen
checkpoint to OUTPUT/model -> score val and test with RewardScorer -> OUTPUT/metrics.json.

Worker (`train_loop_per_worker`): builds the model, restores the latest checkpoint if Ray Train hands
one over (a rerun with `--resume`, or a restart after a worker died: FailureConfig), reads its shard of
the examples (and sibling pairs) once through Ray Data into memory, then per epoch: shuffled steps
(regression rows and pairs of a step go through ONE forward pass, so DDP sees one forward per
backward), val scored by all workers (each its share, gathered), one `ray.train.report` with a
checkpoint from rank 0 (from every rank under DeepSpeed). The model and optimizer are a
karma_ray.training.Learner (DDP, or DeepSpeed ZeRO-2/3: `deepspeed.zero_stage`). A checkpoint folder
is an exported reward-model folder (scorer-loadable; gathered from every rank under ZeRO-3) plus
trainer_state.json and the optimizer's checkpoint: optimizer.pt (plain torch) or deepspeed/state/
(DeepSpeed's own: each rank's ZeRO partition of the Adam moments and the LR schedule), so a resumed
run continues the optimizer, not just the weights.

Output folder: config.yaml (resolved config), model/ (the exported model), metrics.json
({"val": {...}, "test": {...}}), train_summary.json (per-epoch history, chosen epoch, throughput),
ray/ (Ray Train storage: checkpoints; reused by --resume).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from karma_ray.config import save_resolved, to_dict
from karma_ray.reward.config import CONTROL_VARIANTS, META_VARIANTS, TEXT_VARIANTS, RewardModelConfig
from karma_ray.reward.data import evaluate_split, fit_specs, needs_pairs, open_corpus, ray_datasets, split_pairs
from karma_ray.reward.metrics import SplitMetrics
from karma_ray.reward.inputs import build_inputs, rm_text
from karma_ray.reward.model import METADATA_FILE, RewardModelMeta
from karma_ray.training.faults import FaultInjector, forwarded_env
from karma_ray.training.learner import OPTIMIZER_FILE, Learner
from karma_ray.stage import begin_stage, claim_output, config_digest, finish_stage

RUN_NAME = "train_rm"
TRAINER_STATE = "trainer_state.json"


def prepare_output(output: str | os.PathLike, resume: bool, overwrite: bool = False, dry_run: bool = False) -> Path:
    return claim_output(output, "train-rm", resume=resume, overwrite=overwrite, dry_run=dry_run,
                        recognizes=lambda p: (p / "ray" / RUN_NAME).exists() or (p / "config.yaml").exists())


def new_model_meta(cfg: RewardModelConfig, data: str | os.PathLike) -> RewardModelMeta:
    target, features = fit_specs(data, cfg)
    return RewardModelMeta(
        variant=cfg.input.variant,
        target=target,
        features=features,
        max_length=cfg.model.max_length,
        meta_hidden=cfg.model.meta_hidden,
        subreddit_dim=cfg.model.subreddit_dim,
        random_seed=cfg.input.random_seed,
        backbone=cfg.model.backbone if cfg.input.variant in TEXT_VARIANTS else None,
    )


# ------------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------------


class ShardData:
    """A worker's rows in memory: model inputs precomputed except tokenization (done per batch)."""

    def __init__(self, texts: list[str] | None, features: np.ndarray | None, buckets: np.ndarray | None) -> None:
        self.texts = texts  # N strings or None
        self.features = features  # (N, F) or None
        self.buckets = buckets  # (N,) or None

    def take(self, idx: np.ndarray) -> tuple[list[str] | None, np.ndarray | None, np.ndarray | None]:
        texts = [self.texts[i] for i in idx] if self.texts is not None else None
        feats = self.features[idx] if self.features is not None else None
        buckets = self.buckets[idx] if self.buckets is not None else None
        return texts, feats, buckets


def collect_shard(iterator: Any) -> dict[str, list]:
    """Read a Ray Data shard once into column lists."""
    import pyarrow as pa

    tables = list(iterator.iter_batches(batch_size=4096, batch_format="pyarrow"))
    if not tables:
        return {}
    return pa.concat_tables(tables, promote_options="default").to_pydict()


def example_shard(cols: dict[str, list], meta: RewardModelMeta) -> ShardData:
    n = len(cols.get("reply", []))
    texts = [rm_text(c, r, meta.variant) for c, r in zip(cols["context"], cols["reply"])] if meta.variant in TEXT_VARIANTS else None
    feats = buckets = None
    if meta.variant in META_VARIANTS:
        feats, buckets = meta.features.encode(cols, n)
    return ShardData(texts, feats, buckets)


def pair_shards(cols: dict[str, list], meta: RewardModelMeta) -> tuple[ShardData, ShardData]:
    """(chosen, rejected) sides of sibling pairs; side metadata columns are `chosen__<field>` etc."""
    n = len(cols.get("chosen", []))
    sides = []
    for side in ("chosen", "rejected"):
        texts = [rm_text(c, r, meta.variant) for c, r in zip(cols["context"], cols[side])] if meta.variant in TEXT_VARIANTS else None
        feats = buckets = None
        if meta.variant in META_VARIANTS:
            side_cols = {k.split("__", 1)[1]: v for k, v in cols.items() if k.startswith(side + "__")}
            side_cols["subreddit"] = cols["subreddit"]  # siblings share the subreddit
            feats, buckets = meta.features.encode(side_cols, n)
        sides.append(ShardData(texts, feats, buckets))
    return sides[0], sides[1]


def concat_parts(parts: list[tuple[list[str] | None, np.ndarray | None, np.ndarray | None]]):
    texts = None if parts[0][0] is None else [t for p in parts for t in p[0]]
    feats = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
    buckets = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    return texts, feats, buckets


def lr_lambda(total_steps: int, warmup_fraction: float):
    warmup = int(total_steps * warmup_fraction)

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return fn


def _score_rows(model: Any, shard: ShardData, idx: np.ndarray, tokenizer: Any, meta: RewardModelMeta, batch_size: int,
                device: Any, batches: int | None = None) -> np.ndarray:
    """Scores of rows `idx` of the shard, `batch_size` at a time. `batches` pads the pass to that many
    forwards (the first row again, scores dropped), so every rank of a ZeRO-3 group runs as many."""
    import torch

    out = np.empty(len(idx))
    batches = math.ceil(len(idx) / batch_size) if batches is None else batches
    with torch.no_grad():
        for b in range(batches):
            part = idx[b * batch_size : (b + 1) * batch_size]
            rows = part if len(part) else idx[:1] if len(idx) else np.zeros(1, dtype=np.int64)
            inputs = build_inputs(*shard.take(rows), tokenizer, meta.max_length).to(device)
            scores = model(inputs).float().cpu().numpy()
            if len(part):
                out[b * batch_size : b * batch_size + len(part)] = scores
    return out


def _nan_for_none(metrics: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in metrics.items()}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker loop (see the module docstring). `config`: cfg, meta, output, val_pairs."""
    import ray.train
    import torch
    import torch.distributed as dist

    from karma_ray.reward.losses import reward_loss
    from karma_ray.reward.metrics import reward_metrics
    from karma_ray.reward.model import build_reward_model, load_reward_model, save_reward_model
    from karma_ray.reward.scorer import random_control_score

    cfg: RewardModelConfig = config["cfg"]
    meta: RewardModelMeta = config["meta"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.threads_per_worker or max(1, int(cfg.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    is_control = meta.variant in CONTROL_VARIANTS

    # ---- the model, restored from the latest checkpoint when there is one ----
    model = tokenizer = None
    start_epoch, global_step, history = 0, 0, []
    if not is_control:
        model, tokenizer = build_reward_model(meta, cfg.model.backbone, cfg.model.dtype, cfg.model.trust_remote_code, cfg.train.seed)
    checkpoint = ray.train.get_checkpoint()
    resumed_from = -1
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = json.loads((Path(d) / TRAINER_STATE).read_text())
            start_epoch, global_step, history = state["epoch"] + 1, state["global_step"], state["history"]
            resumed_from = state["epoch"]
            if model is not None:  # the weights; the optimizer's state is restored once the learner exists
                restored, _, _ = load_reward_model(d, dtype=cfg.model.dtype)
                model.load_state_dict(restored.state_dict())
        if rank == 0:
            print(f"[train-rm] resumed from the checkpoint of epoch {resumed_from + 1} (global step {global_step})", flush=True)

    # ---- data: this worker's shard, read once ----
    train_cols = collect_shard(ray.train.get_dataset_shard("train"))
    val_cols = collect_shard(ray.train.get_dataset_shard("val"))
    pair_iter = ray.train.get_dataset_shard("train_pairs") if cfg.loss.pairwise_on and not is_control else None
    pair_cols = collect_shard(pair_iter) if pair_iter is not None else {}
    n_train, n_pairs = len(train_cols.get("reply", [])), len(pair_cols.get("chosen", []))
    train_shard = example_shard(train_cols, meta) if n_train else None
    y_train = meta.target.standardize(train_cols.get(meta.target.column, [])) if n_train else np.zeros(0)
    chosen_shard, rejected_shard = pair_shards(pair_cols, meta) if n_pairs else (None, None)

    steps = 0
    if not is_control:
        reg_steps = math.ceil(n_train / cfg.train.batch_size) if cfg.loss.regression_on else 0
        pair_steps = math.ceil(n_pairs / cfg.train.pair_batch_size) if cfg.loss.pairwise_on else 0
        steps = reg_steps if cfg.loss.regression_on else pair_steps
        if distributed:  # every worker must take the same number of steps (one allreduce per step)
            t = torch.tensor([steps], dtype=torch.int64)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            steps = int(t.item())
        if steps == 0:
            raise RuntimeError(f"worker {rank} has no training rows (examples {n_train}, pairs {n_pairs})")

    # ---- optimizer: torch AdamW, under DDP or DeepSpeed ZeRO-2/3 (karma_ray.training.Learner) ----
    learner = None
    if model is not None:
        head_ids = {id(p) for p in model.head_parameters()}
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": cfg.train.lr},
            {"params": [p for p in model.parameters() if id(p) in head_ids], "lr": cfg.train.head_lr},
        ]
        if cfg.deepspeed.enabled:
            os.environ.setdefault("DS_ACCELERATOR", "cuda" if cfg.scaling.use_gpu else "cpu")
        learner = Learner(model, [g for g in groups if g["params"]], deepspeed=cfg.deepspeed,
                          micro_batch_size=cfg.train.batch_size, grad_clip=cfg.train.grad_clip,
                          schedule=lr_lambda(steps * cfg.train.epochs, cfg.train.warmup_fraction),
                          weight_decay=cfg.train.weight_decay, dtype=getattr(torch, cfg.model.dtype), device=device)
        if checkpoint is not None:
            # The Adam moments (this rank's ZeRO partition under DeepSpeed) and the LR schedule: a
            # resumed run takes the same steps an uninterrupted one would have.
            with checkpoint.as_directory() as d:
                learner.load(Path(d))
    unwrapped = model

    val_ids = val_cols.get("id", [])
    val_shard = example_shard(val_cols, meta) if val_ids else None
    y_val = meta.target.standardize(val_cols.get(meta.target.column, [])) if val_ids else np.zeros(0)
    val_pairs = config.get("val_pairs", [])
    epochs = 1 if is_control else cfg.train.epochs
    faults = FaultInjector.from_env(config["output"], rank)

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        losses, samples = [], 0
        if not is_control:
            learner.train()
            rng = np.random.default_rng(cfg.train.seed * 1000 + epoch * 10 + rank)
            reg_order = rng.permutation(n_train)
            pair_order = rng.permutation(n_pairs) if n_pairs else np.zeros(0, dtype=np.int64)
            for step in range(steps):
                parts, n_reg, n_pair = [], 0, 0
                if cfg.loss.regression_on:
                    reg_idx = reg_order[step * cfg.train.batch_size : (step + 1) * cfg.train.batch_size]
                    parts.append(train_shard.take(reg_idx))
                    n_reg = len(reg_idx)
                if cfg.loss.pairwise_on and n_pairs:
                    # pairs cycle when an epoch is counted in examples
                    pos = (np.arange(cfg.train.pair_batch_size) + step * cfg.train.pair_batch_size) % n_pairs
                    pair_idx = pair_order[pos[: min(len(pos), n_pairs)]]
                    parts += [chosen_shard.take(pair_idx), rejected_shard.take(pair_idx)]
                    n_pair = len(pair_idx)
                inputs = build_inputs(*concat_parts(parts), tokenizer, meta.max_length).to(device)
                targets = torch.as_tensor(y_train[reg_idx], dtype=torch.float32, device=device) if n_reg else None

                def loss_fn(m, batch, n_reg=n_reg, n_pair=n_pair, targets=targets):
                    scores = m(batch)  # (n_reg + 2 * n_pair,): regression rows and both pair sides, one forward
                    loss = reward_loss(cfg.loss, scores=scores[:n_reg], targets=targets,
                                       chosen=scores[n_reg : n_reg + n_pair], rejected=scores[n_reg + n_pair :])
                    return loss.total, float(loss.total.detach())

                losses += learner.step([inputs], loss_fn).outputs
                samples += n_reg + 2 * n_pair
                global_step += 1
                faults.after_step(global_step)
            learner.train(False)
        train_seconds = time.perf_counter() - t0

        # ---- val: each worker scores its share, then all gather ----
        val_scores = np.zeros(0)
        if val_ids:
            mine = np.arange(rank, len(val_ids), world)
            if is_control:
                part = np.array([0.0 if meta.variant == "constant" else random_control_score(meta.random_seed, val_cols["context"][i], val_cols["reply"][i]) for i in mine])
            else:
                # every rank runs the same number of forwards (under ZeRO-3 each one is collective)
                batches = math.ceil(math.ceil(len(val_ids) / world) / cfg.train.eval_batch_size)
                part = _score_rows(learner.model, val_shard, mine, tokenizer, meta, cfg.train.eval_batch_size, device, batches)
            gathered = [None] * world
            if distributed:
                dist.all_gather_object(gathered, (mine.tolist(), part.tolist()))
            else:
                gathered = [(mine.tolist(), part.tolist())]
            val_scores = np.empty(len(val_ids))
            for idx, sc in gathered:
                val_scores[idx] = sc
        val = reward_metrics(val_scores.tolist(), y_val.tolist(), val_ids, val_pairs) if val_ids else {}
        total_samples = samples * world
        record = {
            "epoch": epoch + 1,
            "global_step": global_step,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "train_samples_per_s": total_samples / train_seconds if samples else float("nan"),
            "train_seconds": train_seconds,
            "resumed_from_epoch": resumed_from + 1,  # 0: started fresh
            **{f"val_{k}": v for k, v in val.items()},
        }
        history.append({k: v for k, v in record.items()})
        if rank == 0:
            print(
                f"[train-rm] epoch {epoch + 1}/{epochs} step {global_step} loss {record['train_loss']:.4f} "
                f"val spearman {val.get('spearman')} pairwise acc {val.get('pairwise_accuracy')} "
                f"({record['train_samples_per_s']:.1f} samples/s)",
                flush=True,
            )
        with tempfile.TemporaryDirectory() as tmp:
            # Every rank takes part: ZeRO-3 gathers the weights, and under DeepSpeed each rank writes its
            # own optimizer partition (Ray Train merges the ranks' folders into one checkpoint).
            full = learner.full_state_dict() if learner is not None and learner.zero_stage == 3 else None
            if learner is not None:
                learner.save(tmp, writer=rank == 0)
            if rank == 0:
                epoch_meta = replace(meta, extra={"epoch": epoch + 1, "global_step": global_step, "val": val})
                save_reward_model(tmp, unwrapped, tokenizer, epoch_meta, state_dict=full)
                (Path(tmp) / TRAINER_STATE).write_text(json.dumps({"epoch": epoch, "global_step": global_step, "history": history}, default=str))
            ckpt = ray.train.Checkpoint.from_directory(tmp) if any(Path(tmp).iterdir()) else None
            ray.train.report(_nan_for_none(record), checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch + 1:04d}")


# ------------------------------------------------------------------------------------------------
# Driver side
# ------------------------------------------------------------------------------------------------


def build_trainer(cfg: RewardModelConfig, data: str | os.PathLike, output: Path, meta: RewardModelMeta,
                  storage_path: str, name: str, callbacks: list | None = None, materialize: bool = True):
    """The TorchTrainer of one run (also used by each sweep trial)."""
    from ray.data import DataContext
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    DataContext.get_current().enable_progress_bars = cfg.ray.progress_bars

    val_pairs, _ = split_pairs(data, "val")
    env = {"DS_ACCELERATOR": "cuda" if cfg.scaling.use_gpu else "cpu", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "false", **forwarded_env()}
    datasets = ray_datasets(data, cfg, materialize)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "meta": meta, "output": str(output), "val_pairs": val_pairs},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})},
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[name for name in ("train", "train_pairs") if name in datasets]),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.scaling.keep_checkpoints),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": env},
        ),
    )


def choose_checkpoint(result: Any, cfg: RewardModelConfig):
    """(checkpoint, metrics) of the best epoch by the objective, or of the last one."""
    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if c is not None]
    if not candidates:
        raise RuntimeError("the training run reported no checkpoint")
    last = max(candidates, key=lambda cm: cm[1].get("epoch", 0))
    if cfg.train.select_checkpoint == "last":
        return last
    sign = 1.0 if cfg.train.objective_mode == "max" else -1.0

    def key(cm):
        v = cm[1].get(cfg.train.objective)
        return (-math.inf if v is None or not math.isfinite(v) else sign * v, cm[1].get("epoch", 0))

    return max(candidates, key=key)


def export_checkpoint(checkpoint_dir: str | os.PathLike, model_dir: Path) -> Path:
    """Copy a checkpoint's reward-model files (not the trainer/optimizer state) to `model_dir`."""
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    for f in Path(checkpoint_dir).iterdir():
        if f.is_file() and f.name not in (TRAINER_STATE, OPTIMIZER_FILE):
            shutil.copy2(f, model_dir / f.name)
    if not (model_dir / METADATA_FILE).exists():
        raise RuntimeError(f"checkpoint {checkpoint_dir} holds no {METADATA_FILE}")
    return model_dir


def evaluate_model_dir(model_dir: Path, data: str | os.PathLike, cfg: RewardModelConfig) -> dict:
    from karma_ray.reward.scorer import RewardScorer

    scorer = RewardScorer.from_pretrained(model_dir)
    return {split: evaluate_split(scorer, data, split, cfg, cfg.train.eval_batch_size) for split in ("val", "test")}


@dataclass(frozen=True)
class RewardModelResult:
    """What `run_train_rm` wrote, and the exported model's held-out metrics."""

    output: Path
    model_dir: Path  # the exported, scorer-loadable reward model
    metrics_path: Path  # metrics.json: val and test, with the per-subreddit breakdown
    variant: str
    exported_epoch: int | None
    val: SplitMetrics
    test: SplitMetrics


def run_train_rm(cfg: RewardModelConfig, output: str | os.PathLike, *, data: str | os.PathLike,
                 resume: bool = False, overwrite: bool = False) -> RewardModelResult:
    """Train, export, evaluate (see the module docstring). The corpus and the output folder are
    checked before Ray starts (CorpusError, OutputExistsError)."""
    from karma_ray.ray_utils import init_ray

    from karma_ray.models.hf import absolute_if_local

    # Workers run in Ray Train's own working directory: make local paths absolute first.
    cfg = replace(cfg, model=replace(cfg.model, backbone=absolute_if_local(cfg.model.backbone)))
    data = open_corpus(data, need_pairs=needs_pairs(cfg)).root
    out = prepare_output(output, resume, overwrite)
    save_resolved(cfg, out)
    digest = config_digest(cfg, [data])
    begin_stage(out, "train-rm", digest)
    meta = new_model_meta(cfg, data)
    init_ray(cfg.ray)
    trainer = build_trainer(cfg, data, out, meta, str((out / "ray").resolve()), RUN_NAME)
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    checkpoint, chosen = choose_checkpoint(result, cfg)
    with checkpoint.as_directory() as d:
        history = json.loads((Path(d) / TRAINER_STATE).read_text())["history"] if (Path(d) / TRAINER_STATE).exists() else []
        model_dir = export_checkpoint(d, out / "model")
    metrics = evaluate_model_dir(model_dir, data, cfg)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    last = result.metrics or {}
    summary = {
        "variant": cfg.input.variant,
        "exported_epoch": chosen.get("epoch"),
        "select_checkpoint": cfg.train.select_checkpoint,
        "objective": cfg.train.objective,
        "epochs_run": last.get("epoch"),
        "resumed_from_epoch": last.get("resumed_from_epoch"),
        "history": _last_history(result) or history,
        "config": to_dict(cfg),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    rm = RewardModelResult(output=out, model_dir=model_dir, metrics_path=out / "metrics.json", variant=cfg.input.variant,
                           exported_epoch=chosen.get("epoch"), val=SplitMetrics.from_dict(metrics["val"]),
                           test=SplitMetrics.from_dict(metrics["test"]))
    finish_stage(out, "train-rm", digest, {"variant": rm.variant, "exported_epoch": rm.exported_epoch,
                                           "test_spearman": rm.test.spearman, "test_pairwise_accuracy": rm.test.pairwise_accuracy})
    return rm


def _last_history(result: Any) -> list:
    try:
        with result.checkpoint.as_directory() as d:
            return json.loads((Path(d) / TRAINER_STATE).read_text())["history"]
    except Exception:  # noqa: BLE001 - the summary is best effort; metrics.json is the contract
        return []
