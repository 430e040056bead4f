"""The PPO roles in ONE process, without Ray: the same worker classes, called directly.

`LocalRoles` has the interface of `karma_ray.rlhf.roles.Roles`, so `PPODriver(cfg, out,
backend="local")` runs the identical loop with no actors, no object store and no placement groups.
It exists to measure what Ray's orchestration costs (benchmarks/bench_ppo.py compares the two on
the same config in the same run) and to debug the math with a plain debugger. One worker per role
only: data parallelism needs processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import torch

from karma_ray.rlhf.config import PPOConfig
from karma_ray.actors import RestartBudget
from karma_ray.engines.weight_sync import SyncReport
from karma_ray.rlhf.roles import reference_scorer_kwargs
from karma_ray.rlhf.workers.distributed import free_port
from karma_ray.types import CriticStats, Generations, PolicyStats, SamplingSettings


@dataclass
class LocalRoles:
    cfg: PPOConfig
    policy: Any
    critic: Optional[Any]
    reference: Any
    rewards: list
    engine: Any
    restarts: RestartBudget = field(default_factory=lambda: RestartBudget(0))

    def __post_init__(self) -> None:
        self.rollout = SimpleNamespace(actors=[self.engine], on_replace=None)  # as an ActorPool looks to the driver

    @staticmethod
    def put(obj: Any) -> Any:
        return obj

    @staticmethod
    def get(obj: Any) -> Any:
        return obj

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> Generations:
        return self.engine.generate(prompt_ids, sampling)

    def score_refs(self, contexts: list[str], responses: list[str], metadata: list[dict]) -> list:
        return [w.score(contexts, responses, metadata) for w in self.rewards]

    def collect_scores(self, results: list) -> list[torch.Tensor]:
        return [scores for scores, _seconds in results]

    def reference_logprobs(self, seqs: Any) -> Any:
        return self.reference.logprobs(seqs)

    def policy_logprobs(self, seqs: Any) -> list:
        return [self.policy.logprobs(seqs)]

    def critic_values(self, seqs: Any) -> list:
        return [self.critic.values(seqs)] if self.critic is not None else []

    @staticmethod
    def wait_all(*_: Any) -> dict[str, float]:
        return {}  # everything already ran, in order

    def train_step(self, exp: Any, kl_coef: float) -> tuple[PolicyStats, Optional[CriticStats]]:
        p = self.policy.train_step(exp, kl_coef=kl_coef)
        c = self.critic.train_step(exp) if self.critic is not None else None
        return p, c

    def sync_weights(self, engines: Optional[list] = None) -> SyncReport:
        start = time.perf_counter()
        buckets = list(self.policy.weight_buckets(self.cfg.rollout.sync_bucket_mib))
        gathered = time.perf_counter() - start
        reports = [e.update_weights(*buckets) for e in engines or [self.engine]]
        return SyncReport(num_buckets=len(buckets), bucket_mib=float(self.cfg.rollout.sync_bucket_mib), gather_s=gathered,
                          total_s=time.perf_counter() - start, engines=reports)

    def save_checkpoint(self, path: Path) -> None:
        self.policy.save_checkpoint(str(path / "policy"))
        self.policy.save_hf(str(path / "policy_hf"))
        if self.critic is not None:
            self.critic.save_checkpoint(str(path / "critic"))

    def load_checkpoint(self, path: Path) -> None:
        self.policy.load_checkpoint(str(path / "policy"))
        if self.critic is not None:
            self.critic.load_checkpoint(str(path / "critic"))

    def save_policy_hf(self, path: Path) -> None:
        self.policy.save_hf(str(path))

    def shutdown(self) -> None:
        self.engine.close()


def launch_local_roles(cfg: PPOConfig) -> LocalRoles:
    from karma_ray.rlhf.workers.critic import CriticWorker
    from karma_ray.rlhf.workers.policy import PolicyWorker
    from karma_ray.engines.scorer import LogprobScorer
    from karma_ray.rlhf.workers.reward import RewardWorker
    from karma_ray.engines.rollout import HFRollout, VLLMRollout

    if cfg.policy.num_workers != 1 or (cfg.algo.uses_critic and cfg.critic.num_workers != 1) or cfg.rollout.num_engines != 1:
        raise ValueError("the local backend runs one worker per role (policy/critic num_workers=1, rollout.num_engines=1)")
    dist = {"rank": 0, "world_size": 1, "master_addr": "127.0.0.1", "master_port": free_port()}
    policy = PolicyWorker(cfg.model, cfg.policy, cfg.algo, seed=cfg.run.seed, **dist)
    critic = CriticWorker(cfg.model, cfg.critic, cfg.algo, seed=cfg.run.seed, **dist) if cfg.algo.uses_critic else None
    reference = LogprobScorer(**reference_scorer_kwargs(cfg))
    rewards = [RewardWorker(s.path, name=s.name, batch_size=cfg.reward.batch_size) for s in cfg.reward.models]
    engine_cls = VLLMRollout if cfg.rollout.engine == "vllm" else HFRollout
    engine = engine_cls(cfg.model.policy, cfg.rollout, seed=cfg.run.seed, dtype=cfg.model.dtype)
    return LocalRoles(cfg, policy, critic, reference, rewards, engine)
