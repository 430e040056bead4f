"""PPO configuration: one frozen dataclass per concern, composed into `PPOConfig`.

    cfg = load_config(PPOConfig, "configs/ppo/tiny.yaml", ["algo.kl_coef=0.05"])

Every mode (estimator, KL placement, rollout engine, placement) is a field here and is resolved once
by the driver's setup, never inside the loop. `PPOConfig.validate` checks cross-field rules (e.g. a
critic-free estimator with a critic configured, minibatches that do not divide the batch) before any
Ray resource is taken.

Imports only the standard library and the config modules of karma_ray, engines and training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from karma_ray.config import ConfigError, RayConfig, at_least, option, section
from karma_ray.engines.config import RolloutConfig
from karma_ray.training.config import DeepSpeedConfig

CRITIC_FREE = ("grpo", "rloo", "reinforce++")


@dataclass(frozen=True)
class ModelConfig:
    policy: str = option("", "Initial policy: a local HF folder or hub id (a causal LM; safetensors).")
    reference: str | None = option(None, "Frozen reference model for the KL term (None: the initial policy).")
    critic: str | None = option(
        None, "Initial value model backbone (None: the initial policy's backbone with a fresh scalar head)."
    )
    tokenizer: str | None = option(None, "Tokenizer folder or id (None: the policy's).")
    dtype: Literal["float32", "bfloat16", "float16"] = option(
        "float32", "Parameter dtype of trainable models (bf16 on GPU; fp32 on CPU keeps vLLM/HF logprobs comparable)."
    )
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint (off: only transformers' own code runs).")

    def validate(self) -> None:
        if not self.policy:
            raise ConfigError("model.policy is required (a folder or hub id)")


@dataclass(frozen=True)
class TrainerConfig:
    """A DeepSpeed-trained role (policy or critic)."""

    num_workers: int = option(1, "Data-parallel workers (one Ray actor each; gloo on CPU, NCCL on GPU).")
    deepspeed: DeepSpeedConfig = section(
        DeepSpeedConfig, "DeepSpeed ZeRO, the same settings as train-rm and sft (default ZeRO-2; 0 on one worker: "
        "DeepSpeed without ZeRO, measured 1.6x faster than ZeRO-2 on CPU, benchmarks/bench_update.py).", zero_stage=2)
    lr: float = option(1e-5, "Adam learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    grad_clip: float = option(1.0, "Max global gradient norm (0: off).")
    micro_batch_size: int = option(8, "Sequences per forward/backward on one worker (gradient accumulation fills the minibatch).")
    cpus_per_worker: float = option(1.0, "CPUs per worker actor.")
    gpus_per_worker: float = option(0.0, "GPUs per worker actor (0 on CPU machines).")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward (saves memory on big models).")

    def validate(self) -> None:
        if self.num_workers < 1 or self.micro_batch_size < 1:
            raise ConfigError("num_workers and micro_batch_size must be >= 1")
        if self.lr <= 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0, grad_clip and weight_decay >= 0")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise ConfigError("cpus_per_worker and gpus_per_worker must be >= 0")


@dataclass(frozen=True)
class ReferenceConfig:
    cpus: float = option(0.5, "CPUs of the reference actor.")
    gpus: float = option(0.0, "GPUs of the reference actor.")
    micro_batch_size: int = option(16, "Sequences per forward pass.")

    def validate(self) -> None:
        if self.cpus < 0 or self.gpus < 0 or self.cpus + self.gpus <= 0:
            raise ConfigError("reference.cpus/gpus must be >= 0 and not both 0")
        at_least("reference.micro_batch_size", self.micro_batch_size, 1)


@dataclass(frozen=True)
class RewardModelSpec:
    path: str = option("", "A reward model folder from `karma train-rm`/`sweep-rm` (any variant, controls included), or 'rule:NAME'.")
    weight: float = option(1.0, "Weight of this model's (normalized) score in the combined reward.")
    name: str | None = option(None, "Name in logs (None: the folder name).")


@dataclass(frozen=True)
class RewardConfig:
    models: tuple[RewardModelSpec, ...] = option(
        (), "Reward models; their scores combine as sum(weight * score). Rules: 'rule:NAME' (see karma_ray.rlhf.rules)."
    )
    num_actors: int = option(1, "Actors per reward model (requests are split across them).")
    cpus_per_actor: float = option(1.0, "CPUs per reward actor.")
    gpus_per_actor: float = option(0.0, "GPUs per reward actor.")
    batch_size: int = option(32, "Scoring batch size.")
    normalize: bool = option(False, "Whiten scores with running moments across iterations (before clipping).")
    clip: float | None = option(None, "Clip scores to [-clip, clip] after normalization (None: off).")
    eos_penalty: float = option(0.0, "Added to the score of responses that did not end with EOS (e.g. -1).")
    length_target: float | None = option(None, "Target response length for a length penalty (None: off).")
    length_coef: float = option(0.0, "Length penalty per token beyond the target.")

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("reward.models must name at least one reward model")
        for i, spec in enumerate(self.models):
            if not spec.path:
                raise ConfigError(f"reward.models[{i}].path is required")
        if self.num_actors < 1 or self.batch_size < 1:
            raise ConfigError("reward.num_actors and reward.batch_size must be >= 1")
        if self.clip is not None and self.clip <= 0:
            raise ConfigError("reward.clip must be > 0 (or null)")


@dataclass(frozen=True)
class AlgoConfig:
    estimator: Literal["gae", "grpo", "rloo", "reinforce++"] = option(
        "gae", "Advantage estimator: 'gae' trains a critic; grpo/rloo/reinforce++ are critic-free."
    )
    gamma: float = option(1.0, "Discount (1.0 for episodic text generation).")
    lam: float = option(0.95, "GAE lambda.")
    whiten_advantages: bool = option(True, "Whiten advantages over the batch (masked).")
    kl_placement: Literal["reward", "loss", "none"] = option(
        "reward",
        "'reward': -kl_coef * KL per token folded into the reward (InstructGPT/Ziegler et al.); "
        "'loss': a KL term in the policy loss (GRPO style); 'none': no KL (controls only).",
    )
    kl_estimator: Literal["k1", "k2", "k3"] = option("k1", "KL estimator (Schulman's k1/k2/k3).")
    kl_controller: Literal["fixed", "adaptive"] = option("fixed", "Fixed coefficient, or adaptive toward kl_target.")
    kl_coef: float = option(0.05, "KL coefficient (initial value when adaptive).")
    kl_target: float = option(6.0, "Adaptive controller: target KL per sequence.")
    kl_horizon: float = option(10000.0, "Adaptive controller: horizon in samples.")
    ppo_epochs: int = option(1, "Passes over each rollout batch.")
    minibatch_size: int = option(16, "Sequences per optimizer step (global, across policy workers).")
    clip_eps: float = option(0.2, "PPO ratio clip (lower).")
    clip_eps_high: float | None = option(None, "Upper ratio clip (None: clip_eps; DAPO's clip-higher uses e.g. 0.28).")
    value_clip: float = option(0.2, "Clip of the value update around old values.")
    value_coef: float = option(0.5, "Value loss weight (reported; the critic trains separately).")
    entropy_coef: float = option(0.0, "Entropy bonus weight in the policy loss.")
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = option(
        "token-mean", "How per-token losses are averaged."
    )

    def validate(self) -> None:
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ConfigError("algo.gamma and algo.lam must be in [0, 1]")
        if self.kl_coef < 0 or self.clip_eps <= 0 or self.value_clip <= 0:
            raise ConfigError("algo.kl_coef must be >= 0, clip_eps and value_clip > 0")
        if self.ppo_epochs < 1 or self.minibatch_size < 1:
            raise ConfigError("algo.ppo_epochs and algo.minibatch_size must be >= 1")

    @property
    def uses_critic(self) -> bool:
        return self.estimator not in CRITIC_FREE


@dataclass(frozen=True)
class PromptConfig:
    source: Literal["prepared", "file"] = option(
        "prepared", "'prepared': contexts of a `karma prepare` output; 'file': a JSONL/Parquet file of prompts (no Reddit text: the no-exposure condition)."
    )
    path: str = option("", "Prepared corpus folder, or the JSONL/Parquet prompt file.")
    split: str = option("train", "Split of a prepared corpus to draw prompts from.")
    field: str = option("prompt", "Column/key holding the prompt text in a prompt file.")
    render: bool = option(True, "Wrap the text with karma_ray.data.format.policy_prompt (as SFT does).")
    max_prompt_tokens: int = option(256, "Prompts are cut from the LEFT to this many tokens (the end matters most).")
    max_prompts: int | None = option(None, "Use at most this many prompts (None: all).")
    seed: int = option(0, "Prompt order shuffle seed.")

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("prompts.path is required")
        at_least("prompts.max_prompt_tokens", self.max_prompt_tokens, 1)


@dataclass(frozen=True)
class PlacementConfig:
    mode: Literal["colocated", "disaggregated"] = option(
        "disaggregated",
        "'disaggregated': each role gets its own placement group; 'colocated': all roles share one "
        "placement group's bundles (fewer GPUs, roles take turns).",
    )
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = option(
        "PACK", "Placement group strategy for each group."
    )
    ready_timeout_s: float = option(600.0, "Waiting longer than this for resources is an error (config asks more than the cluster has).")


@dataclass(frozen=True)
class RunConfig:
    iterations: int = option(10, "PPO iterations (generate -> ... -> sync).")
    prompts_per_iteration: int = option(16, "Prompts per iteration (x rollout samples per prompt = sequences).")
    samples_per_prompt: int = option(1, "Responses per prompt (>1 for grpo/rloo groups).")
    seed: int = option(0, "Seed of prompt order, sampling and initialization.")
    checkpoint_every: int = option(5, "Checkpoint every N iterations (and at the end unless run.final_checkpoint is off); 0: only at the end.")
    final_checkpoint: bool = option(
        True, "Checkpoint after the last iteration too (what `--resume` with more iterations continues from). Off where "
              "only the exported policy is kept: the experiment's cells, whose checkpoints (weights and Adam moments, "
              "2.1 GB on SmolLM2-135M) are never read.")
    keep_checkpoints: int = option(2, "Most recent checkpoints kept.")
    tensorboard: bool = option(True, "Write TensorBoard event files beside metrics.jsonl.")
    wandb_project: str | None = option(None, "Also log to Weights & Biases (needs `wandb` and a login).")
    mlflow_uri: str | None = option(None, "Also log to MLflow at this tracking URI (needs `mlflow`).")
    max_actor_restarts: int = option(3, "How often a dead rollout/reward actor is replaced before the run fails.")
    gold: Literal["auto", "on", "off"] = option(
        "auto", "Log the planted gold text quality of each batch's replies (gold_mean, gold_sem; watched, never a reward):"
        " auto = when the prompts come from a prepared corpus written by `karma synth`.")

    def validate(self) -> None:
        if self.iterations < 1 or self.prompts_per_iteration < 1 or self.samples_per_prompt < 1:
            raise ConfigError("run.iterations, prompts_per_iteration and samples_per_prompt must be >= 1")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1 or self.max_actor_restarts < 0:
            raise ConfigError("run.checkpoint_every >= 0, keep_checkpoints >= 1, max_actor_restarts >= 0")


@dataclass(frozen=True)
class InTrainingEvalConfig:
    every_iterations: int = option(0, "Score the live policy on the eval tasks every N iterations (0: off); logged as eval/TASK/METRIC.")
    tasks: tuple[str, ...] = option(("truthfulqa_mc2", "humor"), "Multiple-choice task specs (karma_ray/eval/tasks/ or task_dirs).")
    task_dirs: tuple[str, ...] = option((), "Extra folders of task spec YAMLs.")
    limit: int = option(32, "Items per task: a seeded subset, the same at every evaluation (paired across iterations).")
    data_root: str | None = option(None, "Evaluation datasets folder (None: $KARMA_EVAL_DATA, else ../shared/data/eval).")
    max_length: int = option(1024, "Tokens per scored request; longer ones lose the start of their context.")
    requests_per_call: int = option(64, "Requests per policy forward call.")
    seed: int = option(0, "Seed of the subsets and few-shot draws.")

    def validate(self) -> None:
        if self.every_iterations < 0 or self.limit < 1 or self.max_length < 8 or self.requests_per_call < 1:
            raise ConfigError("eval: every_iterations >= 0, limit >= 1, max_length >= 8, requests_per_call >= 1")
        if self.every_iterations and not self.tasks:
            raise ConfigError("eval.tasks must name at least one task when eval.every_iterations > 0")


@dataclass(frozen=True)
class PPOConfig:
    model: ModelConfig = section(ModelConfig, "Which models start the run.")
    policy: TrainerConfig = section(TrainerConfig, "The policy's DeepSpeed workers.")
    critic: TrainerConfig = section(TrainerConfig, "The critic's DeepSpeed workers (not created for critic-free estimators).")
    reference: ReferenceConfig = section(ReferenceConfig, "The frozen reference model's actor.")
    rollout: RolloutConfig = section(RolloutConfig, "Rollout engines and weight sync.")
    reward: RewardConfig = section(RewardConfig, "Reward models and reward shaping.")
    algo: AlgoConfig = section(AlgoConfig, "Advantages, KL and losses.")
    prompts: PromptConfig = section(PromptConfig, "Where prompts come from.")
    placement: PlacementConfig = section(PlacementConfig, "How roles are placed on the cluster.")
    run: RunConfig = section(RunConfig, "Iterations, checkpoints, logging.")
    eval: InTrainingEvalConfig = section(InTrainingEvalConfig, "Evaluation of the live policy during training (through its actors).")
    ray: RayConfig = section(RayConfig, "The Ray cluster.")

    @property
    def sequences_per_iteration(self) -> int:
        return self.run.prompts_per_iteration * self.run.samples_per_prompt

    def validate(self) -> None:
        n = self.sequences_per_iteration
        if self.algo.minibatch_size > n:
            raise ConfigError(f"algo.minibatch_size ({self.algo.minibatch_size}) exceeds the sequences per iteration ({n})")
        if n % self.algo.minibatch_size:
            raise ConfigError(f"algo.minibatch_size ({self.algo.minibatch_size}) must divide the sequences per iteration ({n})")
        if self.algo.minibatch_size % self.policy.num_workers:
            raise ConfigError("algo.minibatch_size must be a multiple of policy.num_workers")
        if self.algo.uses_critic and self.algo.minibatch_size % self.critic.num_workers:
            raise ConfigError("algo.minibatch_size must be a multiple of critic.num_workers")
        if self.algo.estimator in ("grpo", "rloo") and self.run.samples_per_prompt < 2:
            raise ConfigError(f"algo.estimator={self.algo.estimator} needs run.samples_per_prompt >= 2 (groups)")
        if self.rollout.temperature <= 0:
            raise ConfigError("rollout.temperature must be > 0 for PPO: its ratios assume samples from the policy itself "
                              "(greedy decoding, temperature 0, is for evaluation)")
        if self.rollout.max_new_tokens + self.prompts.max_prompt_tokens > self.rollout.max_model_len:
            raise ConfigError("prompts.max_prompt_tokens + rollout.max_new_tokens must fit rollout.max_model_len")
