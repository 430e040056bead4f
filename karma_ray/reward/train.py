"""`karma train-rm`: one Ray Train TorchTrainer run, data-parallel over N workers.

Driver (`run_train_rm`): TRAIN statistics -> Ray Datasets -> TorchTrainer.fit() -> export the chosen
checkpoint to OUTPUT/model -> score val and test with RewardScorer -> OUTPUT/metrics.json.

Worker (`train_loop_per_worker`): reads its shard of the examples (and sibling pairs) once through Ray
Data into memory, then runs the shared training loop (karma_ray/training/loop.py: restore, steps,
evaluation, checkpoints, resume) on a `RewardTask`: per epoch, shuffled steps (regression rows and
pairs of a step go through ONE forward pass, so DDP sees one forward per backward), then val scored by
all workers (each its share, gathered) and one report with a checkpoint. The model and optimizer are a
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from karma_ray.config import save_resolved, to_dict
from karma_ray.data.corpus import PreparedCorpus
from karma_ray.reward.config import CONTROL_VARIANTS, META_VARIANTS, TEXT_VARIANTS, RewardModelConfig
from karma_ray.reward.data import evaluate_split, fit_specs, needs_pairs, ray_datasets, split_pairs
from karma_ray.reward.metrics import SplitMetrics
from karma_ray.reward.inputs import build_inputs, rm_text
from karma_ray.reward.model import METADATA_FILE, RewardModelMeta
from karma_ray.training.faults import FaultInjector
from karma_ray.training.learner import OPTIMIZER_FILE
from karma_ray.training.loop import TRAINER_STATE, LoopPlan, LoopState, StepSums, run_loop, torch_trainer, worker_context, worker_shard
from karma_ray.stage import begin_stage, claim_output, config_digest, finish_stage

RUN_NAME = "train_rm"


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


@dataclass(frozen=True)
class ShardData:
    """A worker's rows in memory: model inputs precomputed except tokenization (done per batch)."""

    texts: list[str] | None  # N strings
    features: np.ndarray | None  # (N, F)
    buckets: np.ndarray | None  # (N,)

    def take(self, idx: np.ndarray) -> tuple[list[str] | None, np.ndarray | None, np.ndarray | None]:
        texts = [self.texts[i] for i in idx] if self.texts is not None else None
        feats = self.features[idx] if self.features is not None else None
        buckets = self.buckets[idx] if self.buckets is not None else None
        return texts, feats, buckets


def collect_shard(iterator: Any) -> dict[str, list]:
    """Read a Ray Data shard once into column lists."""
    import pyarrow as pa

    tables = list(iterator.iter_batches(batch_size=4096, batch_format="pyarrow"))
    return pa.concat_tables(tables, promote_options="default").to_pydict() if tables else {}


def example_shard(cols: dict[str, list], meta: RewardModelMeta) -> ShardData:
    n = len(cols.get("reply", []))
    texts = [rm_text(c, r, meta.variant) for c, r in zip(cols["context"], cols["reply"])] if meta.variant in TEXT_VARIANTS else None
    feats = buckets = None
    if meta.variant in META_VARIANTS:
        feats, buckets = meta.features.encode(cols, n)
    return ShardData(texts, feats, buckets)


def pair_shards(cols: dict[str, list], meta: RewardModelMeta) -> tuple[ShardData, ShardData]:
    """(chosen, rejected) sides of sibling pairs; side metadata columns are `chosen__<field>` etc."""
    sides = []
    for side in ("chosen", "rejected"):
        side_cols = {k.split("__", 1)[1]: v for k, v in cols.items() if k.startswith(side + "__")}
        # this side's reply; siblings share the context and the subreddit
        side_cols.update(context=cols["context"], reply=cols[side], subreddit=cols["subreddit"])
        sides.append(example_shard(side_cols, meta))
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
                device: Any, batches: int) -> np.ndarray:
    """Scores of rows `idx` of the shard, `batch_size` at a time. `batches` pads the pass to that many
    forwards (the first row again, scores dropped), so every rank of a ZeRO-3 group runs as many."""
    import torch

    out = np.empty(len(idx))
    with torch.no_grad():
        for b in range(batches):
            part = idx[b * batch_size : (b + 1) * batch_size]
            rows = part if len(part) else idx[:1] if len(idx) else np.zeros(1, dtype=np.int64)
            inputs = build_inputs(*shard.take(rows), tokenizer, meta.max_length).to(device)
            scores = model(inputs).float().cpu().numpy()
            if len(part):
                out[b * batch_size : b * batch_size + len(part)] = scores
    return out


@dataclass(frozen=True)
class RewardMicroBatch:
    """One step's rows: the regression rows and both sides of the sibling pairs, one forward."""

    inputs: Any  # model inputs of n_reg + 2 * n_pair rows (ModelInputs)
    targets: Any  # (n_reg,) standardized targets, or None
    n_reg: int
    n_pair: int


class RewardTask:
    """A reward model's part of the training loop (karma_ray.training.loop.TrainTask): this worker's
    shard in memory, shuffled steps of regression rows and sibling pairs, val scored by every worker
    (each its share, gathered). A control variant (random, constant) has no model: no steps, one val."""

    def __init__(self, cfg: RewardModelConfig, meta: RewardModelMeta, *, rank: int, world: int, device: Any,
                 train_cols: dict, val_cols: dict, pair_cols: dict, val_pairs: list) -> None:
        import torch
        import torch.distributed as dist

        from karma_ray.reward.model import build_reward_model
        from karma_ray.training.learner import Learner

        self.cfg, self.meta, self.rank, self.world, self.device = cfg, meta, rank, world, device
        self.distributed = world > 1 and dist.is_available() and dist.is_initialized()
        self.model = self.tokenizer = self.learner = None
        self.last_val: dict = {}
        self.n_train, self.n_pairs = len(train_cols.get("reply", [])), len(pair_cols.get("chosen", []))
        self.train_shard = example_shard(train_cols, meta) if self.n_train else None
        self.y_train = meta.target.standardize(train_cols.get(meta.target.column, [])) if self.n_train else np.zeros(0)
        self.chosen, self.rejected = pair_shards(pair_cols, meta) if self.n_pairs else (None, None)
        self.val_cols, self.val_pairs = val_cols, val_pairs
        self.val_ids = val_cols.get("id", [])
        self.val_shard = example_shard(val_cols, meta) if self.val_ids else None
        self.y_val = meta.target.standardize(val_cols.get(meta.target.column, [])) if self.val_ids else np.zeros(0)
        self.steps = 0
        if meta.variant in CONTROL_VARIANTS:
            return
        self.model, self.tokenizer = build_reward_model(meta, cfg.model.backbone, cfg.model.dtype, cfg.model.trust_remote_code, cfg.train.seed)
        self.steps = (math.ceil(self.n_train / cfg.train.batch_size) if cfg.loss.regression_on
                      else math.ceil(self.n_pairs / cfg.train.pair_batch_size))
        if self.distributed:  # every worker must take the same number of steps (one allreduce per step)
            t = torch.tensor([self.steps], dtype=torch.int64)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            self.steps = int(t.item())
        if self.steps == 0:
            raise RuntimeError(f"worker {rank} has no training rows (examples {self.n_train}, pairs {self.n_pairs})")
        head_ids = {id(p) for p in self.model.head_parameters()}
        groups = [
            {"params": [p for p in self.model.parameters() if id(p) not in head_ids], "lr": cfg.train.lr},
            {"params": [p for p in self.model.parameters() if id(p) in head_ids], "lr": cfg.train.head_lr},
        ]
        self.learner = Learner(self.model, [g for g in groups if g["params"]], deepspeed=cfg.deepspeed,
                               micro_batch_size=cfg.train.batch_size, grad_clip=cfg.train.grad_clip,
                               schedule=lr_lambda(self.steps * cfg.train.epochs, cfg.train.warmup_fraction),
                               weight_decay=cfg.train.weight_decay, dtype=getattr(torch, cfg.model.dtype), device=device)

    def micro_batches(self, epoch: int, skip: int):
        import torch

        if self.learner is None:
            return
        cfg = self.cfg
        self.learner.model.train()
        rng = np.random.default_rng(cfg.train.seed * 1000 + epoch * 10 + self.rank)
        reg_order = rng.permutation(self.n_train)
        pair_order = rng.permutation(self.n_pairs) if self.n_pairs else np.zeros(0, dtype=np.int64)
        for step in range(skip, self.steps):
            parts, reg_idx, n_pair = [], np.zeros(0, dtype=np.int64), 0
            if cfg.loss.regression_on:
                reg_idx = reg_order[step * cfg.train.batch_size : (step + 1) * cfg.train.batch_size]
                parts.append(self.train_shard.take(reg_idx))
            if cfg.loss.pairwise_on and self.n_pairs:
                # pairs cycle when an epoch is counted in examples
                pos = (np.arange(cfg.train.pair_batch_size) + step * cfg.train.pair_batch_size) % self.n_pairs
                pair_idx = pair_order[pos[: min(len(pos), self.n_pairs)]]
                parts += [self.chosen.take(pair_idx), self.rejected.take(pair_idx)]
                n_pair = len(pair_idx)
            targets = torch.as_tensor(self.y_train[reg_idx], dtype=torch.float32, device=self.device) if len(reg_idx) else None
            inputs = build_inputs(*concat_parts(parts), self.tokenizer, self.meta.max_length).to(self.device)
            yield RewardMicroBatch(inputs, targets, len(reg_idx), n_pair)

    def train_step(self, micro_batches):
        from karma_ray.reward.losses import reward_loss

        (micro,) = micro_batches
        n_reg, n_pair = micro.n_reg, micro.n_pair

        def loss_fn(model, m: RewardMicroBatch):
            scores = model(m.inputs)  # (n_reg + 2 * n_pair,): regression rows and both pair sides, one forward
            loss = reward_loss(self.cfg.loss, scores=scores[:n_reg], targets=m.targets,
                               chosen=scores[n_reg : n_reg + n_pair], rejected=scores[n_reg + n_pair :])
            return loss.total, float(loss.total.detach())

        step = self.learner.step([micro], loss_fn)
        return StepSums(loss_sum=step.outputs[0], loss_count=1.0, samples=n_reg + 2 * n_pair, tokens=0,
                        grad_norm=step.grad_norm, lr=step.lr)

    def evaluate(self) -> dict | None:
        import torch.distributed as dist

        from karma_ray.reward.metrics import reward_metrics
        from karma_ray.reward.scorer import random_control_score

        if not self.val_ids:
            return None
        mine = np.arange(self.rank, len(self.val_ids), self.world)
        if self.learner is None:
            part = np.array([0.0 if self.meta.variant == "constant" else
                             random_control_score(self.meta.random_seed, self.val_cols["context"][i], self.val_cols["reply"][i]) for i in mine])
        else:
            self.learner.model.eval()
            # every rank runs the same number of forwards (under ZeRO-3 each one is collective)
            batches = math.ceil(math.ceil(len(self.val_ids) / self.world) / self.cfg.train.eval_batch_size)
            part = _score_rows(self.learner.model, self.val_shard, mine, self.tokenizer, self.meta, self.cfg.train.eval_batch_size,
                               self.device, batches)
        gathered = [(mine.tolist(), part.tolist())]
        if self.distributed:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, (mine.tolist(), part.tolist()))
        scores = np.empty(len(self.val_ids))
        for idx, sc in gathered:
            scores[idx] = sc
        self.last_val = reward_metrics(scores.tolist(), self.y_val.tolist(), self.val_ids, self.val_pairs)
        return self.last_val

    def save(self, folder: Path, writer: bool) -> None:
        """A scorer-loadable reward-model folder (gathered from every rank under ZeRO-3) plus the
        optimizer's checkpoint; every rank calls it."""
        from karma_ray.reward.model import save_reward_model

        full = self.learner.full_state_dict() if self.learner is not None and self.learner.zero_stage == 3 else None
        if self.learner is not None:
            self.learner.save(folder, writer=writer)
        if writer:
            save_reward_model(folder, self.model, self.tokenizer, replace(self.meta, extra={"val": self.last_val}), state_dict=full)

    def load(self, folder: Path) -> None:
        from karma_ray.reward.model import load_reward_model

        if self.learner is None:
            return
        if self.learner.engine is None:  # under DeepSpeed, learner.load restores the module too
            restored, _, _ = load_reward_model(folder, dtype=self.cfg.model.dtype)
            self.model.load_state_dict(restored.state_dict())
        # the Adam moments (this rank's ZeRO partition under DeepSpeed) and the LR schedule: a resumed
        # run takes the same steps an uninterrupted one would have
        self.learner.load(folder)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: this worker's shards read once, then the shared loop (training/loop.py).
    `config`: cfg, meta, output, val_pairs."""
    import ray.train

    cfg: RewardModelConfig = config["cfg"]
    meta: RewardModelMeta = config["meta"]
    rank, world, device = worker_context(cfg.train.threads_per_worker or max(1, int(cfg.scaling.cpus_per_worker)))
    is_control = meta.variant in CONTROL_VARIANTS
    pair_iter = worker_shard("train_pairs") if cfg.loss.pairwise_on and not is_control else None
    task = RewardTask(cfg, meta, rank=rank, world=world, device=device,
                      train_cols=collect_shard(worker_shard("train")),
                      val_cols=collect_shard(ray.train.get_dataset_shard("val")),
                      pair_cols=collect_shard(pair_iter) if pair_iter is not None else {},
                      val_pairs=config.get("val_pairs", []))
    plan = LoopPlan(stage="train-rm", epochs=1 if is_control else cfg.train.epochs, eval_every_epoch=True)
    run_loop(task, plan, rank=rank, device=device, after_step=FaultInjector.from_env(config["output"], rank).after_step)


# ------------------------------------------------------------------------------------------------
# Driver side
# ------------------------------------------------------------------------------------------------


def build_trainer(cfg: RewardModelConfig, data: str | os.PathLike, output: Path, meta: RewardModelMeta,
                  storage_path: str, name: str, callbacks: list | None = None, materialize: bool = True):
    """The TorchTrainer of one run (also used by each sweep trial)."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = cfg.ray.progress_bars
    val_pairs, _ = split_pairs(data, "val")
    return torch_trainer(
        train_loop_per_worker, {"cfg": cfg, "meta": meta, "output": str(output), "val_pairs": val_pairs},
        name=name, storage_path=storage_path, num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
        cpus_per_worker=cfg.scaling.cpus_per_worker, max_failures=cfg.scaling.max_failures,
        keep_checkpoints=cfg.scaling.keep_checkpoints, datasets=ray_datasets(data, cfg, materialize),
        split=("train", "train_pairs"), callbacks=callbacks)


def choose_checkpoint(result: Any, cfg: RewardModelConfig):
    """(checkpoint, metrics) of the best epoch by the objective, or of the last one."""
    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if c is not None]
    if not candidates:
        raise RuntimeError("the training run reported no checkpoint")
    if cfg.train.select_checkpoint == "last":
        return max(candidates, key=lambda cm: cm[1].get("epoch", 0))
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
    from karma_ray.models.hf import absolute_if_local
    from karma_ray.ray_utils import init_ray

    # Workers run in Ray Train's own working directory: make local paths absolute first.
    cfg = replace(cfg, model=replace(cfg.model, backbone=absolute_if_local(cfg.model.backbone)))
    data = PreparedCorpus.open(data, pairs=("train",) if needs_pairs(cfg) else ()).root
    out = claim_output(output, "train-rm", resume=resume, overwrite=overwrite,
                       recognizes=lambda p: (p / "ray" / RUN_NAME).exists() or (p / "config.yaml").exists())
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
        model_dir = export_checkpoint(d, out / "model")
    metrics = evaluate_model_dir(model_dir, data, cfg)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with result.checkpoint.as_directory() as d:  # the latest: the whole run's history
        state = LoopState.read(Path(d))
    summary = {
        "variant": cfg.input.variant,
        "exported_epoch": chosen.get("epoch"),
        "select_checkpoint": cfg.train.select_checkpoint,
        "objective": cfg.train.objective,
        "epochs_run": state.epoch,
        "resumed_from_epoch": state.resumed_at_epoch,  # 0: never restored
        "restarts": state.restarts,
        "history": state.history,
        "config": to_dict(cfg),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    rm = RewardModelResult(output=out, model_dir=model_dir, metrics_path=out / "metrics.json", variant=cfg.input.variant,
                           exported_epoch=chosen.get("epoch"), val=SplitMetrics.from_dict(metrics["val"]),
                           test=SplitMetrics.from_dict(metrics["test"]))
    finish_stage(out, "train-rm", digest, {"variant": rm.variant, "exported_epoch": rm.exported_epoch,
                                           "test_spearman": rm.test.spearman, "test_pairwise_accuracy": rm.test.pairwise_accuracy})
    return rm

