"""`karma sft` on Ray Train: data-parallel supervised fine-tuning, checkpoints, resume, export, lineage.

    driver                                   each Ray Train worker (TorchTrainer, Train V2)
    ------                                   ----------------------------------------------
    training_set() -> ids (lineage, steps)   SFTLearner: model + AdamW (+ DDP or DeepSpeed ZeRO),
    read_parquet(split dirs) -> keep_rows    this worker's shard, the reply-token loss; then the
    TorchTrainer(...).fit()         ---->    shared loop (karma_ray/training/loop.py): restore, val
    copy the final checkpoint's model/       loss before, grad_accum micro-batches a step, report
    write metrics.json, lineage.json         every K steps, checkpoint every N, val loss after and a
                                             final checkpoint

Resume: Ray Train V2 restores a run from its storage folder (DIR/ray/sft) when a run of the same name
is started again; `ray.train.get_checkpoint()` then returns the latest checkpoint in every worker, whose
trainer_state.json says where the step count and the epoch left off. The same mechanism restarts the
workers after a failure (train.max_failures).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from karma_ray.config import save_resolved, to_dict
from karma_ray import lineage as lin
from karma_ray.sft.config import SFTConfig
from karma_ray.data.corpus import PreparedCorpus
from karma_ray.training.faults import FaultInjector
from karma_ray.training.loop import LoopPlan, LoopState, StepSums, all_reduce_sum, run_loop, torch_trainer, worker_context, worker_shard
from karma_ray.sft.data import ROW_COLUMNS, SFTBatch, SFTDataError, keep_rows, make_batch, reply_nll, split_dirs, training_set, validation_rows
from karma_ray.stage import OutputExistsError, begin_stage, claim_output, config_digest, finish_stage

MODEL_DIR = "model"  # inside a checkpoint and inside the run folder: a plain Hugging Face folder
RUN_NAME = "sft"
PROGRESS_FILE = "progress.txt"  # the step count rank 0 writes for the console's bar


# ---------------------------------------------------------------------------------------------
# Step arithmetic and schedule (pure)
# ---------------------------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, num_workers: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one pass. Ray's streaming_split(equal=True) gives every worker
    floor(n / workers) rows; trailing micro-batches that do not fill an optimizer step are skipped,
    so every worker takes exactly the same number of steps (DDP and ZeRO collectives stay in step)."""
    micro_batches = math.ceil((num_examples // num_workers) / batch_size)
    return micro_batches // grad_accum


def total_steps(cfg: SFTConfig, num_examples: int) -> int:
    per_epoch = steps_per_epoch(num_examples, cfg.scaling.num_workers, cfg.train.batch_size, cfg.train.grad_accum)
    if per_epoch == 0:
        raise SFTDataError(
            f"{num_examples} training examples are too few for one optimizer step of "
            f"{cfg.scaling.num_workers} workers x {cfg.train.grad_accum} micro-batches"
        )
    return cfg.train.max_steps if cfg.train.max_steps is not None else cfg.train.epochs * per_epoch


def lr_factor(step: int, warmup_steps: int, total: int, schedule: str) -> float:
    """Multiplier of the peak lr for the update that follows `step` completed updates."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(max(step - warmup_steps, 0) / max(total - warmup_steps, 1), 1.0)
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# The learner: one data-parallel replica (plain class: runs in a Ray worker or a test process)
# ---------------------------------------------------------------------------------------------


class SFTLearner:
    """One replica's part of the training loop (karma_ray.training.loop.TrainTask): a
    karma_ray.training.Learner (DDP, or DeepSpeed ZeRO-2/3 when deepspeed.zero_stage is 2 or 3) around
    the HF causal LM, the reply-token loss, this worker's Ray Data shard and its share of val."""

    def __init__(self, cfg: SFTConfig, total: int, device: torch.device | str = "cpu", *, shard=None,
                 val: tuple[list[str], list[str]] = ([], []), rank: int = 0, world: int = 1):
        from karma_ray.models.hf import load_causal_lm, load_tokenizer
        from karma_ray.training.learner import Learner

        self.cfg = cfg
        self.total = total
        self.device = torch.device(device)
        self.shard, self.val, self.rank, self.world = shard, val, rank, world
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        model = load_causal_lm(cfg.model.path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        self.module = model  # the bare HF model (what is saved)
        opt = cfg.optim
        self.learner = Learner(
            model, [{"params": list(model.parameters()), "lr": opt.lr}], deepspeed=cfg.deepspeed,
            micro_batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum, grad_clip=opt.max_grad_norm or 0.0,
            schedule=lambda s: lr_factor(s, opt.warmup_steps, self.total, opt.schedule), betas=tuple(opt.betas),
            weight_decay=opt.weight_decay, dtype=getattr(torch, cfg.model.dtype), device=self.device,
        )

    def batch(self, contexts: Sequence[str], replies: Sequence[str]) -> SFTBatch:
        return make_batch(self.tokenizer, contexts, replies, self.cfg.data)

    def micro_batches(self, epoch: int, skip: int) -> Iterator[SFTBatch]:
        """This worker's shard, batch_size rows at a time, shuffled per epoch; the first `skip` were
        consumed before the checkpoint a resumed run starts from."""
        shuffle = self.cfg.data.shuffle_buffer
        rows_iter = self.shard.iter_batches(
            batch_size=self.cfg.train.batch_size, batch_format="numpy", local_shuffle_buffer_size=shuffle or None,
            local_shuffle_seed=(self.cfg.train.seed * 1_000_003 + epoch * 1009 + self.rank) if shuffle else None,
        )
        for i, rows in enumerate(rows_iter):
            if i >= skip:
                yield self.batch(list(rows["context"]), list(rows["reply"]))

    def _nll(self, model, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of reply-token NLL, reply-token count) of one batch."""
        ids, attn = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
        logits = model(input_ids=ids, attention_mask=attn).logits  # (B, T, V)
        nll, mask = reply_nll(logits, SFTBatch(ids, attn, batch.labels.to(self.device)))
        return nll.sum(), mask.sum()

    def train_step(self, micro_batches: Sequence[SFTBatch]) -> StepSums:
        """One optimizer step over `grad_accum` micro-batches; each micro-batch's loss is its
        token-mean reply NLL, averaged over micro-batches (and over workers by DDP/ZeRO). The sums
        are the reply NLL and reply tokens, so a window's loss is the token mean."""

        def loss_fn(model, b: SFTBatch):
            nll_sum, count = self._nll(model, b)
            return nll_sum / count.clamp(min=1), (float(nll_sum.detach()), int(count))

        step = self.learner.step(micro_batches, loss_fn)
        return StepSums(
            loss_sum=sum(nll for nll, _ in step.outputs),
            loss_count=sum(count for _, count in step.outputs),
            samples=sum(b.input_ids.shape[0] for b in micro_batches),
            tokens=sum(b.num_tokens for b in micro_batches),
            grad_norm=step.grad_norm,
            lr=step.lr,
        )

    @torch.no_grad()
    def eval_sums(self, contexts: Sequence[str], replies: Sequence[str]) -> tuple[float, int]:
        """(reply NLL sum, reply tokens) over examples, batch_size at a time, weights unchanged."""
        model = self.learner.model
        was_training = model.training
        model.eval()
        nll_total, count_total = 0.0, 0
        step = self.cfg.train.batch_size
        for start in range(0, len(contexts), step):
            nll_sum, count = self._nll(model, self.batch(contexts[start : start + step], replies[start : start + step]))
            nll_total += float(nll_sum)
            count_total += int(count)
        model.train(was_training)
        return nll_total, count_total

    def evaluate(self) -> Optional[dict]:
        """Token-mean reply NLL and perplexity over all workers' equal shares of the validation rows."""
        contexts, replies = self.val
        if not contexts:
            return None
        nll, count = self.eval_sums(contexts[self.rank :: self.world], replies[self.rank :: self.world])
        nll, count = all_reduce_sum([nll, float(count)], self.device)
        loss = nll / max(count, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "examples": len(contexts), "tokens": int(count)}

    def save(self, folder: Path, writer: bool) -> None:
        """HF weights + tokenizer (writer only) and the optimizer's checkpoint into `folder`; every
        rank calls it (ZeRO-3 gathers the weights, each rank writes its ZeRO partition)."""
        state_dict = self.learner.full_state_dict() if self.learner.zero_stage == 3 else None
        if writer:
            self.module.save_pretrained(folder / MODEL_DIR, safe_serialization=True, state_dict=state_dict)
            self.tokenizer.save_pretrained(folder / MODEL_DIR)
        self.learner.save(folder, writer)

    def load(self, folder: Path) -> None:
        if self.learner.engine is None:
            from safetensors.torch import load_file

            state = {k: v for w in sorted((folder / MODEL_DIR).glob("*.safetensors")) for k, v in load_file(str(w)).items()}
            missing, unexpected = self.module.load_state_dict(state, strict=False)
            # tied weights are saved once; anything else missing means a different architecture
            tied = getattr(self.module, "_tied_weights_keys", None) or ()
            missing = [k for k in missing if k not in tied]
            if unexpected or missing:
                raise RuntimeError(f"checkpoint {folder} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.learner.load(folder)  # under DeepSpeed: the module too


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: the shared training loop (karma_ray/training/loop.py) on an SFTLearner."""
    cfg: SFTConfig = config["cfg"]
    total: int = config["total_steps"]
    rank, world, device = worker_context(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed + rank)
    learner = SFTLearner(cfg, total, device, shard=worker_shard("train"),
                         val=(config["val_contexts"], config["val_replies"]), rank=rank, world=world)
    # with max_steps the epochs run on until the steps are done
    plan = LoopPlan(stage="sft", epochs=cfg.train.epochs if cfg.train.max_steps is None else sys.maxsize, total_steps=total,
                    grad_accum=cfg.train.grad_accum, log_every_steps=cfg.train.log_every_steps,
                    checkpoint_every_steps=cfg.train.checkpoint_every_steps, eval_before=True, eval_after=True,
                    progress_file=str(Path(config["output"]) / PROGRESS_FILE))
    run_loop(learner, plan, rank=rank, device=learner.device, after_step=FaultInjector.from_env(config["output"], rank).after_step)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTResult:
    output: Path
    model_dir: Path  # an HF folder with its lineage.json (and the trained-on ids)
    metrics_path: Path  # metrics.json: steps, tokens, val loss before/after, the train curve
    steps: int
    num_examples: int
    val_loss_before: Optional[float]
    val_loss_after: Optional[float]


def check_output(output: str | os.PathLike, resume: bool, overwrite: bool = False, dry_run: bool = True) -> Path:
    """The output policy of karma_ray.stage; --resume needs a run to resume."""
    out = Path(output)
    run = out / "ray" / RUN_NAME
    if resume and not run.is_dir():
        raise OutputExistsError(f"--resume: no run to resume in {out} (expected {run})")
    return claim_output(out, "sft", resume=resume, overwrite=overwrite, dry_run=dry_run,
                        recognizes=lambda p: run.exists() or (p / "config.yaml").exists())


def check_model(path: str) -> None:
    """A local model folder must hold config.json; a name that is not a folder must read as a hub id."""
    from karma_ray.models.packaged import PackagedModelError, check_resolvable, is_packaged

    if is_packaged(path):
        try:
            check_resolvable(path, "model.path")
        except PackagedModelError as err:
            raise SFTDataError(str(err)) from None
        return
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise SFTDataError(f"model.path {path} is not a Hugging Face model folder (no config.json)")
    elif path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise SFTDataError(f"model.path {path} does not exist")


def check_cluster_cpus(cfg: SFTConfig, cluster_cpus: float) -> None:
    """Ray Train workers hold their CPUs for the whole run; Ray Data's read tasks need some left over,
    else training waits forever for its first batch (seen on a 2-CPU cluster with 2 one-CPU workers)."""
    workers = 0.0 if cfg.scaling.use_gpu else cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    if workers + cfg.data.read_cpus > cluster_cpus:
        raise SFTDataError(
            f"the cluster has {cluster_cpus:g} CPUs; {cfg.scaling.num_workers} workers x {cfg.scaling.cpus_per_worker:g} "
            f"CPUs + data.read_cpus {cfg.data.read_cpus:g} do not fit (lower scaling.cpus_per_worker, e.g. 0.5)"
        )


def run_sft(cfg: SFTConfig, output: str | os.PathLike, *, data: str | os.PathLike, resume: bool = False,
            overwrite: bool = False) -> SFTResult:
    """Check inputs, train on Ray, export DIR/model + metrics.json + lineage.json. Everything that can
    fail on bad input fails before Ray starts (CorpusError, SFTDataError, OutputExistsError)."""
    from karma_ray.models.hf import absolute_if_local

    # Workers run in Ray Train's own working directory: make local paths absolute first.
    cfg = replace(cfg, model=replace(cfg.model, path=absolute_if_local(cfg.model.path), tokenizer=absolute_if_local(cfg.model.tokenizer)))
    prepared_dir = PreparedCorpus.open(data, splits=cfg.data.splits).root
    out = check_output(output, resume, overwrite)
    check_model(cfg.model.path)
    train_dirs = split_dirs(prepared_dir, cfg.data.splits)
    train_set = training_set(prepared_dir, cfg.data)
    val_contexts, val_replies = validation_rows(prepared_dir, cfg.data, cfg.scaling.num_workers)
    total = total_steps(cfg, len(train_set.ids))
    check_output(out, resume, overwrite, dry_run=False)
    save_resolved(cfg, out)
    digest = config_digest(cfg, [prepared_dir])
    begin_stage(out, "sft", digest)
    print(f"[sft] {len(train_set.ids):,} training examples from splits {list(cfg.data.splits)}; {total} optimizer steps; "
          f"{len(val_contexts)} validation examples", flush=True)

    import ray.data

    from karma_ray.ray_utils import init_ray

    init_ray(cfg.ray)
    check_cluster_cpus(cfg, ray.cluster_resources().get("CPU", 0.0))
    dataset = ray.data.read_parquet([str(d) for d in train_dirs], columns=ROW_COLUMNS, num_cpus=cfg.data.read_cpus).map_batches(
        keep_rows, batch_format="pyarrow", fn_kwargs={"cfg": cfg.data, "max_id": train_set.max_id}, num_cpus=cfg.data.read_cpus
    )
    trainer = torch_trainer(
        train_loop_per_worker,
        {"cfg": cfg, "total_steps": total, "val_contexts": val_contexts, "val_replies": val_replies, "output": str(out)},
        name=RUN_NAME, storage_path=str((out / "ray").resolve()), num_workers=cfg.scaling.num_workers,
        use_gpu=cfg.scaling.use_gpu, cpus_per_worker=cfg.scaling.cpus_per_worker, max_failures=cfg.train.max_failures,
        keep_checkpoints=cfg.train.keep_checkpoints, datasets={"train": dataset}, split=("train",))
    from karma_ray.console import follow_steps

    with follow_steps(out / PROGRESS_FILE, total, "sft"):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("SFT finished without a checkpoint")
    exported = export(result.checkpoint, out, prepared_dir, cfg, train_set.ids)
    finish_stage(out, "sft", digest, {"steps": exported.steps, "val_loss_before": exported.val_loss_before,
                                      "val_loss_after": exported.val_loss_after})
    return exported


def export(checkpoint, out: Path, prepared_dir: str | os.PathLike, cfg: SFTConfig, ids: list[str]) -> SFTResult:
    """Final checkpoint -> DIR/model (HF folder: safetensors, config, tokenizer, lineage.json),
    DIR/metrics.json, DIR/lineage.json and the trained-on ids."""
    model_dir = out / MODEL_DIR
    with checkpoint.as_directory() as folder:
        state = LoopState.read(Path(folder))
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(Path(folder) / MODEL_DIR, model_dir)
    ids_file = lin.write_example_ids(ids, out / lin.IDS_FILE)
    shutil.copy2(ids_file, model_dir / lin.IDS_FILE)
    base = cfg.model.path  # a local folder is already absolute (run_sft)
    stage = lin.data_stage(
        "sft", base, prepared_dir, cfg.data.splits, ids, to_dict(cfg),
        example_ids_file=str(ids_file.resolve()), steps=state.step, examples_seen=state.samples_seen,
        filters={"min_score": cfg.data.min_score, "min_sibling_percentile": cfg.data.min_sibling_percentile,
                 "max_examples": cfg.data.max_examples},
    )
    lineage = lin.extend_lineage(base, stage, model_dir)
    lin.write_lineage(lineage, model_dir)
    lin.write_lineage(lineage, out)
    metrics = {
        "steps": state.step, "epochs_started": state.epoch + (1 if state.micro_in_epoch else 0), "examples_seen": state.samples_seen,
        "tokens_seen": state.tokens_seen, "num_train_examples": len(ids), "restarts": state.restarts,
        "val_before": state.val_before, "val_after": state.val_after, "train_curve": state.history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    before = state.val_before["loss"] if state.val_before else None
    after = state.val_after["loss"] if state.val_after else None
    shown = " -> ".join("—" if v is None else f"{v:.3f}" for v in (before, after))
    print(f"[sft] exported {model_dir} ({state.step} steps); val loss {shown}", flush=True)
    return SFTResult(out, model_dir, out / "metrics.json", state.step, len(ids), before, after)
