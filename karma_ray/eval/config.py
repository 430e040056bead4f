"""`karma eval` configuration: one frozen dataclass per concern, validated before Ray starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from karma_ray.config import ConfigError, RayConfig, option, section
from karma_ray.engines.config import RolloutConfig

DEFAULT_TASKS = ("humor", "sentiment", "implicature_0shot", "implicature_5shot", "truthfulqa_mc1", "truthfulqa_mc2",
                 "mmlu", "sycophancy", "persona", "ai_risk", "toxicity")


@dataclass(frozen=True)
class EvalTasksConfig:
    names: tuple[str, ...] = option(DEFAULT_TASKS, "Tasks to run (spec files in karma_ray/eval/tasks/ or tasks.dirs).")
    dirs: tuple[str, ...] = option((), "Extra folders of task spec YAMLs (a file there overrides a built-in of the same name).")
    limit: Optional[int] = option(200, "Items per task: a seeded random subset, the same for every model (None: all).")
    limits: tuple[str, ...] = option((), "Per-task item counts overriding `limit`, as 'task=N' (e.g. 'mmlu=100', 'toxicity=50').")
    data_root: Optional[str] = option(
        None, "Folder of the evaluation datasets (None: $KARMA_EVAL_DATA, else ../shared/data/eval beside the repo)."
    )
    check_counts: bool = option(True, "Refuse a dataset whose row count differs from the published one.")

    def limit_of(self, task: str) -> Optional[int]:
        for item in self.limits:
            name, _, value = item.partition("=")
            if name == task:
                return None if value in ("", "None", "none", "null") else int(value)
        return self.limit

    def validate(self) -> None:
        if not self.names:
            raise ConfigError("tasks.names must list at least one task")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("tasks.limit must be >= 1 (None: all items)")
        for item in self.limits:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ConfigError(f"tasks.limits: {item!r} is not 'task=N'")
            if name not in self.names:
                raise ConfigError(f"tasks.limits: {name!r} is not in tasks.names")
            if value not in ("", "None", "none", "null") and (not value.isdigit() or int(value) < 1):
                raise ConfigError(f"tasks.limits: {item!r}: N must be a positive integer")


@dataclass(frozen=True)
class ScoringConfig:
    replicas: int = option(1, "Model replicas (Ray actors) scoring log-likelihoods; requests are split across them.")
    cpus_per_replica: float = option(2.0, "CPUs per replica (its torch threads).")
    gpus_per_replica: float = option(0.0, "GPUs per replica (0 on CPU).")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "Weights dtype of the replicas (float16 needs a GPU).")
    max_length: int = option(2048, "Tokens a request may use; longer ones lose the START of their context (as in lm-eval).")
    micro_batch_size: int = option(32, "Requests per forward pass at most.")
    max_batch_tokens: int = option(8192, "Padded tokens per forward pass at most (longest requests go first).")
    requests_per_call: int = option(128, "Requests per actor call: the granularity of load balancing and of the progress bar.")

    def validate(self) -> None:
        if self.replicas < 1 or self.cpus_per_replica <= 0 or self.gpus_per_replica < 0:
            raise ConfigError("scoring.replicas must be >= 1, cpus_per_replica > 0, gpus_per_replica >= 0")
        if min(self.max_length, self.micro_batch_size, self.max_batch_tokens, self.requests_per_call) < 1:
            raise ConfigError("scoring.max_length, micro_batch_size, max_batch_tokens and requests_per_call must be >= 1")


@dataclass(frozen=True)
class ToxicityEvalConfig:
    classifier: str = option("packaged:toxicity-jigsaw-bilstm", "Toxicity classifier: a converted folder or a packaged: id.")
    samples_per_prompt: int = option(25, "Continuations sampled per prompt (k; the RealToxicityPrompts paper uses 25).")
    temperature: float = option(1.0, "Sampling temperature of the continuations.")
    top_p: float = option(0.9, "Nucleus sampling of the continuations (the RTP paper: 0.9).")
    max_new_tokens: int = option(20, "Tokens per continuation (the RTP paper: 20).")
    threshold: float = option(0.5, "A continuation is toxic when its score is >= this (toxicity probability).")
    subsets: tuple[str, ...] = option(("toxic", "nontoxic"), "DecodingTrust subsets of prompts: toxic, nontoxic.")

    def validate(self) -> None:
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1:
            raise ConfigError("toxicity.samples_per_prompt and max_new_tokens must be >= 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or not 0 < self.threshold < 1:
            raise ConfigError("toxicity.temperature must be > 0, top_p in (0, 1], threshold in (0, 1)")
        if not self.subsets or set(self.subsets) - {"toxic", "nontoxic"}:
            raise ConfigError("toxicity.subsets: a non-empty subset of (toxic, nontoxic)")


@dataclass(frozen=True)
class KarmaEvalConfig:
    corpus: Optional[str] = option(None, "Prepared corpus (a `karma prepare` output) whose held-out contexts the models answer.")
    split: str = option("test", "The corpus split of the contexts.")
    reward_model: Optional[str] = option(None, "Reward model scoring the replies (a train-rm output or its model/ folder).")
    temperature: float = option(1.0, "Sampling temperature of the replies (1.0: the policy's own distribution, as PPO samples; 0: greedy).")
    max_new_tokens: int = option(32, "Tokens per reply.")
    max_prompt_tokens: int = option(256, "Context tokens kept (cut from the start).")
    gold: Literal["auto", "on", "off"] = option(
        "auto", "Planted gold text quality of the replies: auto = when the corpus came from `karma synth`."
    )

    def validate(self) -> None:
        if self.temperature < 0 or self.max_new_tokens < 1 or self.max_prompt_tokens < 1:
            raise ConfigError("karma.temperature must be >= 0, max_new_tokens and max_prompt_tokens >= 1")


@dataclass(frozen=True)
class StatsConfig:
    confidence: float = option(0.95, "Confidence level of every interval.")
    n_resamples: int = option(10_000, "Bootstrap (and permutation) resamples.")

    def validate(self) -> None:
        if not 0.5 <= self.confidence < 1 or self.n_resamples < 100:
            raise ConfigError("stats.confidence must be in [0.5, 1) and n_resamples >= 100")


@dataclass(frozen=True)
class EvalConfig:
    seed: int = option(0, "Seed of the item subsets, few-shot draws, sampling and resampling (recorded in results.json).")
    reuse_identical: bool = option(
        True, "Score a model whose tensors, config and tokenizer equal an earlier model's once, and give it that "
        "model's item scores (every seed is per item, so a second scoring would repeat them exactly): e.g. a control "
        "policy that never moved. Recorded in results.json and the report.")
    tasks: EvalTasksConfig = section(EvalTasksConfig, "Which tasks, on how many items.")
    scoring: ScoringConfig = section(ScoringConfig, "Log-likelihood scoring of multiple-choice tasks (lm-evaluation-harness).")
    generation: RolloutConfig = section(RolloutConfig, "Rollout engines of the generation tasks (toxicity, karma).")
    toxicity: ToxicityEvalConfig = section(ToxicityEvalConfig, "RealToxicityPrompts sampling and scoring.")
    karma: KarmaEvalConfig = section(KarmaEvalConfig, "Replies to held-out Reddit contexts, scored by a reward model.")
    stats: StatsConfig = section(StatsConfig, "Confidence intervals and paired tests.")
    ray: RayConfig = section(RayConfig, "Ray cluster.")

    def validate(self) -> None:
        if "karma" in self.tasks.names and (not self.karma.corpus or not self.karma.reward_model):
            raise ConfigError("the karma task needs karma.corpus (a prepared corpus) and karma.reward_model")


__all__ = ["DEFAULT_TASKS", "EvalConfig", "EvalTasksConfig", "KarmaEvalConfig", "ScoringConfig", "StatsConfig", "ToxicityEvalConfig"]
