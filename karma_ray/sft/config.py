"""`karma sft` configuration: one frozen dataclass per concern, validated before Ray starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from karma_ray.config import ConfigError, RayConfig, at_least, option, section
from karma_ray.training.config import DeepSpeedConfig


@dataclass(frozen=True)
class SFTModelConfig:
    path: str = option("", "Base causal LM: a local Hugging Face folder (safetensors) or a hub id already in the local cache.")
    tokenizer: str | None = option(None, "Tokenizer folder or id (None: the model's own).")
    dtype: Literal["float32", "bfloat16", "float16"] = option(
        "float32", "Weights dtype while training. bfloat16 halves memory on GPUs; CPUs train in float32."
    )
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint folder (off: a checkpoint cannot run code).")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward (less memory, ~30% slower).")

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("model.path is required (e.g. model.path=runs/tiny_llama)")


@dataclass(frozen=True)
class SFTDataConfig:
    splits: tuple[str, ...] = option(("train",), "Prepared splits to train on (folders DATA/examples/split=NAME).")
    val_split: str | None = option("val", "Split whose first `eval_examples` (by id) give the validation loss before and after training; None: none.")
    eval_examples: int = option(256, "Validation examples (rounded down to a multiple of the worker count).")
    max_prompt_tokens: int = option(
        256, "Prompt tokens kept; longer contexts lose their START (the turns nearest the reply matter most)."
    )
    max_reply_tokens: int = option(
        128, "Reply tokens kept, EOS included; a longer reply is cut and gets no EOS (it did not end there)."
    )
    min_score: int | None = option(
        None, "Keep only replies with score >= this (e.g. 2: well-received replies only); None: every reply."
    )
    min_sibling_percentile: float | None = option(
        None, "Keep only replies ranked at least this high among their siblings (0..1); None: no filter."
    )
    max_examples: int | None = option(None, "Use only the first N eligible examples (by id); None: all.")
    shuffle_buffer: int = option(1024, "Rows in each worker's local shuffle buffer (0: read in file order).")
    read_cpus: float = option(
        0.5,
        "CPUs each Ray Data read/filter task asks for. The training workers hold their CPUs for the whole run, "
        "so the cluster must keep at least this many free or the data pipeline (and training) waits forever.",
    )

    def validate(self) -> None:
        if not self.splits:
            raise ConfigError("data.splits must name at least one split")
        if self.val_split is not None and self.val_split in self.splits:
            raise ConfigError(f"data.val_split '{self.val_split}' is also a training split: its loss would not be held out")
        if self.read_cpus <= 0:
            raise ConfigError("data.read_cpus must be > 0")
        if self.eval_examples < 0 or self.shuffle_buffer < 0:
            raise ConfigError("data.eval_examples and data.shuffle_buffer must be >= 0")
        if self.max_prompt_tokens < 1 or self.max_reply_tokens < 2:
            raise ConfigError("data.max_prompt_tokens must be >= 1 and data.max_reply_tokens >= 2")
        if self.min_sibling_percentile is not None and not 0.0 <= self.min_sibling_percentile <= 1.0:
            raise ConfigError("data.min_sibling_percentile must be in [0, 1]")
        at_least("data.max_examples", self.max_examples, 1)


@dataclass(frozen=True)
class SFTOptimConfig:
    lr: float = option(2e-5, "Peak learning rate (AdamW).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    betas: tuple[float, ...] = option((0.9, 0.95), "AdamW betas.")
    warmup_steps: int = option(0, "Linear warmup from 0 to `lr` over this many optimizer steps.")
    schedule: Literal["cosine", "linear", "constant"] = option("cosine", "Decay after warmup, to 0 at the last step.")
    max_grad_norm: float | None = option(1.0, "Clip the global gradient norm (None: no clipping).")

    def validate(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("optim: need lr > 0, weight_decay >= 0, warmup_steps >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("optim.betas must be two numbers in [0, 1)")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError("optim.max_grad_norm must be > 0 or null")


@dataclass(frozen=True)
class SFTTrainConfig:
    epochs: int = option(1, "Passes over the training examples.")
    max_steps: int | None = option(None, "Stop after this many optimizer steps in total (None: run all epochs).")
    batch_size: int = option(8, "Sequences per worker per micro-batch.")
    grad_accum: int = option(1, "Micro-batches per optimizer step (global batch = batch_size x grad_accum x num_workers).")
    log_every_steps: int = option(10, "Report loss and tokens/s every N optimizer steps.")
    checkpoint_every_steps: int = option(100, "Checkpoint (HF safetensors + optimizer state) every N steps; the final step always checkpoints.")
    keep_checkpoints: int = option(2, "Checkpoints kept on disk (the oldest are deleted).")
    max_failures: int = option(0, "Worker failures Ray Train recovers from (restarting from the latest checkpoint); -1: unlimited.")
    seed: int = option(0, "Seed of the data shuffle and of torch.")

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train: epochs, batch_size and grad_accum must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("train.max_steps must be >= 1 or null")
        if self.log_every_steps < 1 or self.checkpoint_every_steps < 1 or self.keep_checkpoints < 1:
            raise ConfigError("train: log_every_steps, checkpoint_every_steps and keep_checkpoints must be >= 1")
        at_least("train.max_failures", self.max_failures, -1)


@dataclass(frozen=True)
class SFTScalingConfig:
    num_workers: int = option(2, "Data-parallel Ray Train workers (gloo on CPU, NCCL on GPU).")
    use_gpu: bool = option(False, "One GPU per worker.")
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker (torch threads = max(1, floor of it)).")

    def validate(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker <= 0:
            raise ConfigError("scaling: num_workers must be >= 1 and cpus_per_worker > 0")


@dataclass(frozen=True)
class SFTConfig:
    model: SFTModelConfig = section(SFTModelConfig, "The base model and tokenizer.")
    data: SFTDataConfig = section(SFTDataConfig, "Which prepared examples are trained on, and how they become tokens.")
    optim: SFTOptimConfig = section(SFTOptimConfig, "Optimizer and learning-rate schedule.")
    train: SFTTrainConfig = section(SFTTrainConfig, "Steps, batches, logging, checkpoints, fault tolerance.")
    scaling: SFTScalingConfig = section(SFTScalingConfig, "Ray Train workers.")
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig, "DeepSpeed ZeRO (off by default).")
    ray: RayConfig = section(RayConfig, "The Ray cluster.")

    def validate(self) -> None:
        if self.data.val_split is not None and 0 < self.data.eval_examples < self.scaling.num_workers:
            raise ConfigError("data.eval_examples must be 0 or >= scaling.num_workers (each worker evaluates an equal share)")
        self.ray.check_fits(self.scaling.num_workers * self.scaling.cpus_per_worker + self.data.read_cpus,
                            "scaling.num_workers x scaling.cpus_per_worker + data.read_cpus",
                            "the data pipeline would never get a CPU")
        if self.deepspeed.offload_optimizer and not self.scaling.use_gpu:
            raise ConfigError("deepspeed.offload_optimizer only makes sense with scaling.use_gpu=true")
