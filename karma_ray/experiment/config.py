"""`karma experiment` configuration: what the study runs, one section per stage of it.

Each stage section names the stage's own YAML (configs/rm, configs/sft, configs/ppo, configs/eval)
plus dotted overrides; the experiment fills in the paths that link the stages (the prepared corpus,
the reward models, the policies). `plan_experiment` builds and validates every stage config from
these before any file is written or any Ray resource taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from karma_ray.config import ConfigError, RayConfig, option, section
from karma_ray.reward.config import CONTROL_VARIANTS, TEXT_VARIANTS

ALL_VARIANTS = ("text", "text_meta", "response", "meta", "random", "constant")


@dataclass(frozen=True)
class CorpusSection:
    synthetic_comments: int = option(
        0, "Write a synthetic Pushshift-format corpus of this many comments and study it (0: read `inputs`).")
    synthetic_seed: int = option(0, "Seed of the synthetic corpus.")
    inputs: tuple[str, ...] = option((), "Reddit dumps or folders to prepare (when synthetic_comments is 0).")
    config: str = option("configs/data/synthetic.yaml", "The `karma prepare` config.")
    overrides: tuple[str, ...] = option((), "Dotted overrides of the prepare config.")

    def validate(self) -> None:
        if self.synthetic_comments < 0:
            raise ConfigError("corpus.synthetic_comments must be >= 0")
        if not self.synthetic_comments and not self.inputs:
            raise ConfigError("corpus: give inputs (Reddit dumps) or synthetic_comments > 0")


@dataclass(frozen=True)
class ModelsSection:
    policy: str = option(
        "tiny", "Base policy: 'tiny' (a random-init Llama on a BPE tokenizer trained on the corpus), a local HF "
                "folder, a hub id or a packaged: id (e.g. packaged:smollm2-135m-instruct).")
    rm_backbone: str = option("tiny", "Reward-model backbone: 'tiny' (a random-init BERT on the corpus tokenizer), a folder, a hub id or a packaged: id (packaged:minilm-l6).")
    tiny_vocab_size: int = option(2048, "Vocabulary of the corpus tokenizer of the tiny models.")


@dataclass(frozen=True)
class RewardSection:
    config: str = option("configs/rm/tiny_text.yaml", "The `karma train-rm` config every variant starts from.")
    overrides: tuple[str, ...] = option((), "Dotted overrides of it (model.*, train.*, ...).")
    variants: tuple[str, ...] = option(ALL_VARIANTS, f"Reward-model input variants, one Ray Tune trial each ({', '.join(ALL_VARIANTS)}).")
    judge: str = option("text", "The variant whose reward model scores every policy's replies in evaluation (the karma task).")
    max_concurrent_trials: int = option(1, "Reward-model trials at once (each takes the rm config's workers).")

    def validate(self) -> None:
        bad = [v for v in self.variants if v not in ALL_VARIANTS]
        if bad or not self.variants:
            raise ConfigError(f"rm.variants: unknown {bad} (known: {', '.join(ALL_VARIANTS)})" if bad else "rm.variants is empty")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"rm.variants names a variant twice: {list(self.variants)}")
        if self.judge not in self.variants:
            raise ConfigError(f"rm.judge {self.judge!r} is not one of rm.variants {list(self.variants)}")
        if self.judge in CONTROL_VARIANTS:
            raise ConfigError(f"rm.judge {self.judge!r} is a control (it scores nothing); choose one of {sorted(TEXT_VARIANTS)}")


@dataclass(frozen=True)
class ExposureSection:
    conditions: tuple[Literal["exposure", "base"], ...] = option(
        ("exposure", "base"), "'exposure': the base policy fine-tuned on the corpus's train split first (SFT); 'base': it never saw the corpus.")
    config: str = option("configs/sft/synthetic.yaml", "The `karma sft` config of the exposure policy.")
    overrides: tuple[str, ...] = option((), "Dotted overrides of it.")

    def validate(self) -> None:
        if not self.conditions or len(set(self.conditions)) != len(self.conditions):
            raise ConfigError(f"exposure.conditions must name each of exposure/base at most once (got {list(self.conditions)})")


@dataclass(frozen=True)
class PPOSection:
    config: str = option("configs/ppo/tiny.yaml", "The `karma ppo` config of every cell.")
    overrides: tuple[str, ...] = option((), "Dotted overrides of it.")
    seeds: tuple[int, ...] = option((0,), "PPO seeds: one cell per reward variant x exposure condition x seed.")
    constant_seeds: tuple[int, ...] = option(
        (), "Seeds of the constant-reward control's cells (empty: ppo.seeds). A constant reward leaves every reply the "
            "same advantage, so with a critic-free estimator and the KL in the reward (zero at the start) the policy "
            "never moves whatever the seed: one seed is the control, more only repeat it.")
    variants: tuple[str, ...] = option(
        (), "The reward-model variants that get PPO cells (empty: every one of rm.variants); the others are trained "
            "and reported as karma predictors only.")
    prompts: str = option(
        "corpus", "'corpus': prompts are the corpus's train contexts (Reddit text, also for the base arm); or a JSONL/Parquet "
                  "file of non-Reddit prompts (field 'prompt'), so the base arm never sees Reddit text at all.")
    trial_cpus: float = option(0.1, "CPUs of each Ray Tune trial's own driver (its PPO roles reserve theirs).")
    max_failures: int = option(1, "Retries of a failed PPO cell (a lost node, a crashed actor) before it is reported as failed.")

    def seeds_of(self, variant: str) -> tuple[int, ...]:
        """The seeds of one reward variant's cells."""
        return self.constant_seeds if variant == "constant" and self.constant_seeds else self.seeds

    def validate(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"ppo.seeds must be distinct and non-empty (got {list(self.seeds)})")
        if len(set(self.constant_seeds)) != len(self.constant_seeds):
            raise ConfigError(f"ppo.constant_seeds must be distinct (got {list(self.constant_seeds)})")
        if self.trial_cpus <= 0:
            raise ConfigError("ppo.trial_cpus must be > 0 (Ray Tune cannot give a trial 0 CPUs)")
        if self.max_failures < 0:
            raise ConfigError("ppo.max_failures must be >= 0")


@dataclass(frozen=True)
class EvalSection:
    config: str = option("configs/eval/smoke.yaml", "The `karma eval` config (every policy and the base are evaluated together).")
    overrides: tuple[str, ...] = option((), "Dotted overrides of it (tasks.names, tasks.limit, ...).")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = option("karma", "The study's name (report title).")
    corpus: CorpusSection = section(CorpusSection, "The corpus and how it is prepared.")
    models: ModelsSection = section(ModelsSection, "The base policy and the reward-model backbone.")
    rm: RewardSection = section(RewardSection, "Reward-model variants (Ray Tune, one trial per variant).")
    exposure: ExposureSection = section(ExposureSection, "Exposure conditions of the policy.")
    ppo: PPOSection = section(PPOSection, "The PPO matrix (Ray Tune, one trial per cell).")
    eval: EvalSection = section(EvalSection, "Evaluation of every policy against the base.")
    ray: RayConfig = section(RayConfig, "The Ray cluster every stage runs on.")

    def validate(self) -> None:
        stray = [v for v in self.ppo.variants if v not in self.rm.variants]
        if stray:
            raise ConfigError(f"ppo.variants {stray} are not trained: rm.variants is {list(self.rm.variants)}")
        if len(set(self.ppo.variants)) != len(self.ppo.variants):
            raise ConfigError(f"ppo.variants names a variant twice: {list(self.ppo.variants)}")

    @property
    def policy_variants(self) -> tuple[str, ...]:
        """The reward variants of the PPO matrix, in rm.variants order."""
        return tuple(v for v in self.rm.variants if not self.ppo.variants or v in self.ppo.variants)


__all__ = ["ALL_VARIANTS", "ExperimentConfig"]
