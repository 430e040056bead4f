"""Configuration of `karma train-rm` and `karma sweep-rm` (frozen dataclasses, validated before Ray starts).

Only the standard library and karma_ray.config are imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from karma_ray.config import ConfigError, RayConfig, at_least, option, section
from karma_ray.training.config import DeepSpeedConfig

# The input switch. `random` and `constant` are RL controls: they have no weights and are never trained.
TEXT_VARIANTS = ("text", "text_meta", "response")
META_VARIANTS = ("text_meta", "meta")
CONTROL_VARIANTS = ("random", "constant")
Variant = Literal["text", "text_meta", "response", "meta", "random", "constant"]

# Metadata a reward model may see (prepared example columns; see karma_ray/reward/inputs.py for the encoding).
METADATA_FIELDS = (
    "hour",
    "weekday",
    "seconds_since_parent",
    "seconds_since_submission",
    "depth",
    "parent_score",
    "num_siblings",
    "sibling_rank_by_time",
    "reply_is_op",
    "subreddit",
)

# Named loss settings a sweep can range over: (regression kind, pairwise weight).
LOSS_PRESETS = {
    "mse": ("mse", 0.0),
    "huber": ("huber", 0.0),
    "bt": ("none", 1.0),
    "mse+bt": ("mse", 1.0),
    "huber+bt": ("huber", 1.0),
}


@dataclass(frozen=True)
class ModelConfig:
    backbone: str | None = option(
        None,
        "Hugging Face backbone (local folder or hub id) for the text variants: an encoder (BERT, MiniLM) or a "
        "decoder (Llama, Qwen). It is loaded as AutoModelForSequenceClassification with one label, so pooling is "
        "the architecture's own (CLS/pooler for encoders, last non-pad token for decoders).",
    )
    max_length: int = option(256, "Tokens per input; longer inputs lose the START of the context (the reply is kept).")
    dtype: Literal["float32", "bfloat16"] = option("float32", "Weights' dtype while training and scoring.")
    trust_remote_code: bool = option(False, "Allow the backbone's own modelling code (off: only transformers' code runs).")
    meta_hidden: int = option(64, "Hidden width of the metadata MLP (meta and text_meta variants).")
    subreddit_buckets: int = option(64, "Hashed subreddit buckets, each with a learned embedding (0: no subreddit feature).")
    subreddit_dim: int = option(8, "Size of a subreddit bucket's embedding.")

    def validate(self) -> None:
        if not 8 <= self.max_length <= 32768:
            raise ConfigError("model.max_length must be in [8, 32768]")
        if self.meta_hidden < 1 or self.subreddit_buckets < 0 or self.subreddit_dim < 1:
            raise ConfigError("model.meta_hidden and model.subreddit_dim must be >= 1, subreddit_buckets >= 0")


@dataclass(frozen=True)
class InputConfig:
    variant: Variant = option(
        "text",
        "What the model sees. text: context + reply (the paper's conversational-context model); text_meta: "
        "also the metadata; response: the reply alone; meta: metadata only; random / constant: RL controls "
        "(fixed random scores / 0).",
    )
    features: tuple[str, ...] = option(METADATA_FIELDS, "Metadata fields used by meta and text_meta.")
    random_seed: int = option(0, "Seed of the `random` control's scores (a hash of seed, context and reply).")

    def validate(self) -> None:
        unknown = [f for f in self.features if f not in METADATA_FIELDS]
        if unknown:
            raise ConfigError(f"input.features: unknown {unknown} (known: {', '.join(METADATA_FIELDS)})")
        if self.variant in META_VARIANTS and not self.features:
            raise ConfigError(f"input.features must not be empty for variant {self.variant}")


@dataclass(frozen=True)
class TargetConfig:
    column: Literal["log_score", "subreddit_z", "sibling_percentile", "thread_percentile"] = option(
        "log_score",
        "Prepared label column to regress on; it is standardized with the TRAIN split's mean and std "
        "(stored with the model), so scores are in train standard deviations.",
    )


@dataclass(frozen=True)
class LossConfig:
    regression: Literal["mse", "huber", "none"] = option("mse", "Regression loss on the standardized target.")
    regression_weight: float = option(1.0, "Weight of the regression loss.")
    huber_delta: float = option(1.0, "Huber loss threshold (in target standard deviations).")
    pairwise_weight: float = option(
        0.0, "Weight of the Bradley-Terry loss on sibling pairs, -log sigmoid(s_chosen - s_rejected - margin); 0: off."
    )
    pairwise_margin: float = option(0.0, "Margin the chosen reply's score should exceed the rejected one's by.")

    def validate(self) -> None:
        if self.regression_weight < 0 or self.pairwise_weight < 0 or self.huber_delta <= 0:
            raise ConfigError("loss: weights must be >= 0 and huber_delta > 0")
        if not self.regression_on and not self.pairwise_on:
            raise ConfigError("loss: enable a regression loss or set pairwise_weight > 0")

    @property
    def regression_on(self) -> bool:
        return self.regression != "none" and self.regression_weight > 0

    @property
    def pairwise_on(self) -> bool:
        return self.pairwise_weight > 0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(3, "Passes over the training examples (or pairs, with a pairwise-only loss).")
    batch_size: int = option(32, "Examples per step per worker (regression).")
    pair_batch_size: int = option(16, "Sibling pairs per step per worker (pairwise loss).")
    eval_batch_size: int = option(64, "Examples per forward pass when scoring val/test.")
    lr: float = option(5e-5, "Peak learning rate of the backbone (AdamW).")
    head_lr: float = option(1e-3, "Learning rate of the freshly initialized parts (score head, metadata MLP).")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    warmup_fraction: float = option(0.1, "Fraction of all steps with a linear warm-up, then linear decay to 0.")
    grad_clip: float = option(1.0, "Clip the global gradient norm to this (0: off).")
    seed: int = option(0, "Seed of initialization and shuffling.")
    max_train_examples: int | None = option(None, "Use at most this many training examples (None: all).")
    select_checkpoint: Literal["best", "last"] = option(
        "best", "Exported checkpoint: the epoch with the best `objective` on val, or the last one."
    )
    objective: str = option("val_spearman", "Reported metric that picks the best checkpoint (and that a sweep optimizes).")
    objective_mode: Literal["max", "min"] = option("max", "Whether the objective is maximized or minimized.")
    threads_per_worker: int | None = option(None, "torch intra-op threads per worker (None: the worker's CPUs).")

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.pair_batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("train: epochs and batch sizes must be >= 1")
        if self.lr <= 0 or self.head_lr <= 0 or self.weight_decay < 0 or not 0 <= self.warmup_fraction < 1:
            raise ConfigError("train: lr, head_lr must be > 0, weight_decay >= 0, warmup_fraction in [0, 1)")
        at_least("train.grad_clip", self.grad_clip, 0)
        at_least("train.max_train_examples", self.max_train_examples, 1)


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = option(1, "Data-parallel Ray Train workers (gloo on CPU, NCCL on GPU).")
    use_gpu: bool = option(False, "One GPU per worker.")
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker.")
    max_failures: int = option(2, "Worker failures recovered from the last checkpoint before the run fails (-1: no limit).")
    keep_checkpoints: int | None = option(None, "Checkpoints kept on storage (None: all; one per epoch).")

    def validate(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker <= 0:
            raise ConfigError("scaling.num_workers must be >= 1 and cpus_per_worker > 0")
        at_least("scaling.max_failures", self.max_failures, -1)
        at_least("scaling.keep_checkpoints", self.keep_checkpoints, 1)


@dataclass(frozen=True)
class EvalConfig:
    subreddits: int = option(10, "Per-subreddit breakdown of the most frequent N subreddits of each split.")
    min_subreddit_examples: int = option(20, "Skip subreddits with fewer examples in the breakdown.")


# A local cluster too small for the workers: Ray Train would retry the worker group start forever.
_FEWER_WORKER_CPUS = "lower scaling.cpus_per_worker or scaling.num_workers (torch threads: train.threads_per_worker)"


@dataclass(frozen=True)
class RewardModelConfig:
    model: ModelConfig = section(ModelConfig, "Backbone and heads.")
    input: InputConfig = section(InputConfig, "Input variant and metadata features.")
    target: TargetConfig = section(TargetConfig, "Regression target.")
    loss: LossConfig = section(LossConfig, "Regression and pairwise losses.")
    train: TrainConfig = section(TrainConfig, "Optimization.")
    scaling: ScalingConfig = section(ScalingConfig, "Ray Train workers and fault tolerance.")
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig, "DeepSpeed ZeRO (off by default: plain torch DDP).")
    eval: EvalConfig = section(EvalConfig, "Metrics on val and test.")
    ray: RayConfig = section(RayConfig, "The Ray cluster.")

    def validate(self) -> None:
        if self.input.variant in TEXT_VARIANTS and not self.model.backbone:
            raise ConfigError(f"model.backbone is required for variant '{self.input.variant}'")
        self.ray.check_fits(self.scaling.num_workers * self.scaling.cpus_per_worker, "the training workers", _FEWER_WORKER_CPUS)


@dataclass(frozen=True)
class SearchConfig:
    variants: tuple[Variant, ...] = option(("text", "response", "constant"), "Input variants to try.")
    losses: tuple[str, ...] = option(("mse",), f"Loss presets to try: {', '.join(LOSS_PRESETS)}.")
    lrs: tuple[float, ...] = option((5e-5,), "Learning rates: the grid, or the [min, max] of a log-uniform draw.")
    mode: Literal["grid", "random"] = option(
        "grid", "grid: every variant x loss x lr; random: variant and loss from the lists, lr log-uniform in the range."
    )
    num_samples: int = option(1, "grid: repeats of the whole grid; random: trials drawn.")
    asha: bool = option(True, "Stop weak trials early with ASHA (on `objective`, per epoch).")
    grace_period: int = option(1, "ASHA: epochs every trial runs before it can be stopped.")
    reduction_factor: float = option(2.0, "ASHA: keep about 1/reduction_factor of the trials at each rung.")
    max_concurrent_trials: int = option(2, "Trials running at once (each takes scaling.num_workers workers).")
    trial_cpus: float = option(0.1, "CPUs of the trial driver itself (Ray Tune cannot give a trial 0).")

    def validate(self) -> None:
        if not self.variants or not self.losses or not self.lrs:
            raise ConfigError("search: variants, losses and lrs must not be empty")
        bad = [x for x in self.losses if x not in LOSS_PRESETS]
        if bad:
            raise ConfigError(f"search.losses: unknown {bad} (known: {', '.join(LOSS_PRESETS)})")
        if any(lr <= 0 for lr in self.lrs):
            raise ConfigError("search.lrs must be > 0")
        if self.num_samples < 1 or self.max_concurrent_trials < 1 or self.grace_period < 1 or self.reduction_factor <= 1:
            raise ConfigError("search: num_samples, max_concurrent_trials, grace_period >= 1 and reduction_factor > 1")
        if self.trial_cpus <= 0:
            raise ConfigError("search.trial_cpus must be > 0 (Ray Tune refuses a trial with 0 CPUs)")


@dataclass(frozen=True)
class SweepConfig:
    rm: RewardModelConfig = section(RewardModelConfig, "The training settings every trial starts from.")
    search: SearchConfig = section(SearchConfig, "The search space and scheduler.")

    def validate(self) -> None:
        self.rm.ray.check_fits(self.search.trial_cpus + self.rm.scaling.num_workers * self.rm.scaling.cpus_per_worker,
                               "one trial (search.trial_cpus + its workers)", _FEWER_WORKER_CPUS)
        if any(v in TEXT_VARIANTS for v in self.search.variants) and not self.rm.model.backbone:
            raise ConfigError("rm.model.backbone is required when search.variants has a text variant")
