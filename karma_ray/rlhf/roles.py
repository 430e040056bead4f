"""The PPO roles as the driver sees them: launched from the config, with typed fan-out calls.

`launch_roles(cfg)` reserves the placement groups (karma_ray.rlhf.placement), starts every actor
with its resources from the config (nothing hard-coded in a decorator), waits until all are ready,
and returns `Roles`. Modes are resolved here: a critic-free estimator gets no critic actors and
`critic_values`/critic `train_step` become no-ops, so the driver's loop has no branches.

Rollout engines and reward models live in `ActorPool`s (karma_ray.actors): an actor that died is relaunched with the
same options, the engine resynced, and the call retried (bounded by run.max_actor_restarts).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch

from karma_ray.actors import ActorPool, RestartBudget
from karma_ray.rlhf.config import PPOConfig
from karma_ray.rlhf.placement import Placement, RoleRequest, check_fits, create_placement, plan_placement
from karma_ray.engines.weight_sync import SyncReport, sync_weights
from karma_ray.types import CriticStats, Generations, PolicyStats, SamplingSettings, concat_generations


def role_requests(cfg: PPOConfig) -> list[RoleRequest]:
    reward_actors = len(cfg.reward.models) * cfg.reward.num_actors
    return [
        RoleRequest("policy", cfg.policy.num_workers, cfg.policy.cpus_per_worker, cfg.policy.gpus_per_worker),
        RoleRequest("critic", cfg.critic.num_workers if cfg.algo.uses_critic else 0, cfg.critic.cpus_per_worker, cfg.critic.gpus_per_worker),
        RoleRequest("reference", 1, cfg.reference.cpus, cfg.reference.gpus),
        RoleRequest("reward", reward_actors, cfg.reward.cpus_per_actor, cfg.reward.gpus_per_actor),
        RoleRequest("rollout", cfg.rollout.num_engines, cfg.rollout.cpus_per_engine, cfg.rollout.gpus_per_engine),
    ]


def reference_scorer_kwargs(cfg: PPOConfig) -> dict:
    """The reference role is a frozen LogprobScorer of model.reference (default: the initial policy),
    in the policy's dtype, so policy and reference logprobs are comparable."""
    return {"model_path": cfg.model.reference or cfg.model.policy, "dtype": cfg.model.dtype, "seed": cfg.run.seed,
            "micro_batch_size": cfg.reference.micro_batch_size, "trust_remote_code": cfg.model.trust_remote_code}


def _worker_env() -> dict:
    # DeepSpeed must not probe for CUDA on CPU-only workers; vLLM/HF read the same offline flag.
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    else:
        # Colocated roles share one GPU: growable segments return freed memory instead of holding
        # each process's fragmented peak (a user-set value wins).
        env["PYTORCH_CUDA_ALLOC_CONF"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    return env


def launch_roles(cfg: PPOConfig, output_dir: Path) -> "Roles":
    import ray

    from karma_ray.rlhf.group import WorkerGroup
    from karma_ray.rlhf.workers.critic import CriticWorker
    from karma_ray.rlhf.workers.policy import PolicyWorker
    from karma_ray.engines.scorer import LogprobScorer
    from karma_ray.rlhf.workers.reward import RewardWorker
    from karma_ray.engines.rollout import HFRollout, VLLMRollout

    plan = plan_placement(cfg.placement.mode, cfg.placement.strategy, role_requests(cfg))
    if cfg.ray.address is None and not os.environ.get("RAY_ADDRESS"):
        # A local cluster cannot grow: say so now rather than waiting for the timeout.
        problem = check_fits(plan, ray.cluster_resources())
        if problem:
            raise RuntimeError(f"the local Ray cluster is too small for this config ({problem})")
    placement = create_placement(plan, cfg.placement.ready_timeout_s)
    env = {"env_vars": _worker_env()}
    restarts = RestartBudget(cfg.run.max_actor_restarts)

    def group(role: str, cls: type, trainer) -> Any:
        pg, bundles = placement.group_and_bundles(role)
        return WorkerGroup(
            cls,
            num_workers=trainer.num_workers,
            init_kwargs={"model": cfg.model, "trainer": trainer, "algo": cfg.algo, "seed": cfg.run.seed},
            num_cpus=trainer.cpus_per_worker,
            num_gpus=trainer.gpus_per_worker,
            placement_group=pg,
            bundle_indices=bundles,
            runtime_env=env,
        )

    policy = group("policy", PolicyWorker, cfg.policy)
    critic = group("critic", CriticWorker, cfg.critic) if cfg.algo.uses_critic else None

    reference = (
        ray.remote(LogprobScorer)
        .options(**placement.options_for("reference", 0), runtime_env=env)
        .remote(**reference_scorer_kwargs(cfg))
    )

    engine_cls = VLLMRollout if cfg.rollout.engine == "vllm" else HFRollout

    def launch_engine(i: int) -> Any:
        return (
            ray.remote(engine_cls)
            .options(**placement.options_for("rollout", i), runtime_env=env, max_concurrency=1)
            .remote(cfg.model.policy, cfg.rollout, seed=cfg.run.seed + i, dtype=cfg.model.dtype)
        )

    def launch_reward(model_index: int, i: int) -> Any:
        spec = cfg.reward.models[model_index]
        return (
            ray.remote(RewardWorker)
            .options(**placement.options_for("reward", model_index * cfg.reward.num_actors + i), runtime_env=env)
            .remote(spec.path, name=spec.name, batch_size=cfg.reward.batch_size)
        )

    rewards = [ActorPool(f"reward[{m}]", cfg.reward.num_actors, partial(launch_reward, m), restarts)
               for m in range(len(cfg.reward.models))]
    rollout = ActorPool("rollout", cfg.rollout.num_engines, launch_engine, restarts)
    ray.get([reference.ready.remote()])
    for trainer in (policy, critic):
        if trainer is not None:
            trainer.wait_ready(cfg.placement.ready_timeout_s)  # raises the constructor's error, if any
    return Roles(cfg, placement, policy, critic, reference, rewards, rollout, restarts)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges of n items over `parts` workers, sizes differing by at most one."""
    base, extra = divmod(n, parts)  # the first `extra` ranges get one item more
    return [(i * base + min(i, extra), (i + 1) * base + min(i + 1, extra)) for i in range(parts)]


@dataclass
class Roles:
    cfg: PPOConfig
    placement: Placement
    policy: Any  # WorkerGroup of PolicyWorker
    critic: Optional[Any]  # WorkerGroup of CriticWorker, None for critic-free estimators
    reference: Any  # actor handle
    rewards: list[ActorPool]  # one pool per reward model
    rollout: ActorPool
    restarts: RestartBudget
    _score_calls: dict = field(default_factory=dict)

    # object passing: ObjectRefs between actors (the in-process LocalRoles passes objects)
    @staticmethod
    def put(obj: Any) -> Any:
        import ray

        return ray.put(obj)

    @staticmethod
    def get(ref: Any) -> Any:
        import ray

        return ray.get(ref)

    # 2 generate
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> Generations:
        ranges = _split(len(prompt_ids), len(self.rollout.actors))

        def call(actor, i):
            a, b = ranges[i]
            s = replace(sampling, seed=None if sampling.seed is None else sampling.seed + i)
            return actor.generate.remote(prompt_ids[a:b], s)

        nonempty = [i for i, (a, b) in enumerate(ranges) if b > a]
        parts = self.rollout.run(call, nonempty)
        return concat_generations(parts, [ranges[i][0] for i in nonempty])

    # 3 score (refs now, results after the fan-out wait)
    def score_refs(self, contexts: list[str], responses: list[str], metadata: list[dict]) -> list[dict[int, Any]]:
        out = []
        for m, pool in enumerate(self.rewards):
            ranges = _split(len(contexts), len(pool.actors))

            def call(actor, i, ranges=ranges):
                a, b = ranges[i]
                return actor.score.remote(contexts[a:b], responses[a:b], metadata[a:b])

            self._score_calls[m] = call
            out.append(pool.submit(call, [i for i, (a, b) in enumerate(ranges) if b > a]))
        return out

    def collect_scores(self, refs: list[dict[int, Any]]) -> list[torch.Tensor]:
        """(B,) scores per reward model; dead reward actors are replaced and re-asked."""
        parts = [pool.collect(refs[m], self._score_calls[m]) for m, pool in enumerate(self.rewards)]
        return [torch.cat([scores for scores, _seconds in p]) for p in parts]

    # 4 reference
    def reference_logprobs(self, seqs_ref: Any) -> Any:
        return self.reference.logprobs.remote(seqs_ref)

    # 5 values (+ the policy's own logprobs of the sampled tokens)
    def policy_logprobs(self, seqs_ref: Any) -> list[Any]:
        return self.policy.call("logprobs", seqs_ref)  # every rank (ZeRO-3 needs all); rank 0's is used

    def critic_values(self, seqs_ref: Any) -> list[Any]:
        return self.critic.call("values", seqs_ref) if self.critic is not None else []

    @staticmethod
    def wait_all(score_refs: list[dict[int, Any]], ref_ref: Any, policy_refs: list, value_refs: list) -> dict[str, float]:
        """Wait for the fanned-out phase; returns seconds until each role's result was ready."""
        import ray

        start = time.perf_counter()
        named = {"reference": [ref_ref], "policy_logprobs": list(policy_refs), "values": list(value_refs),
                 **{f"score{m}": list(refs.values()) for m, refs in enumerate(score_refs)}}
        owner = {r: name for name, refs in named.items() for r in refs}
        pending, seen = list(owner), {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                seen[owner[r]] = time.perf_counter() - start  # the role's LAST ref decides
        return seen

    # 7 update
    def train_step(self, exp_ref: Any, kl_coef: float) -> tuple[PolicyStats, Optional[CriticStats]]:
        """Every rank trains; their stats are all-reduced, so rank 0's stand for the group."""
        p_refs = self.policy.call("train_step", exp_ref, kl_coef=kl_coef)
        c_refs = self.critic.call("train_step", exp_ref) if self.critic is not None else []
        results = self.get(p_refs + c_refs)
        return results[0], (results[len(p_refs)] if c_refs else None)

    # 8 sync
    def sync_weights(self, engines: Optional[list] = None) -> SyncReport:
        """Policy rank 0 streams its weights to the engines. Every other rank runs the same generator
        at the same time (under ZeRO-3 the full tensors are gathered collectively) and yields nothing."""
        engines = self.rollout.actors if engines is None else engines
        bucket_mib = self.cfg.rollout.sync_bucket_mib
        others = [a.weight_buckets.options(num_returns="streaming").remote(bucket_mib) for a in self.policy.actors[1:]]
        report = sync_weights(self.policy.actors[0], engines, bucket_mib, self.cfg.rollout.sync_timeout_s)
        for stream in others:
            for _ in stream:  # drains; raises if that rank failed
                pass
        return report

    # checkpoints
    def save_checkpoint(self, path: Path) -> None:
        refs = self.policy.call("save_checkpoint", str(path / "policy"))
        refs += self.policy.call("save_hf", str(path / "policy_hf"))
        if self.critic is not None:
            refs += self.critic.call("save_checkpoint", str(path / "critic"))
        self.get(refs)

    def load_checkpoint(self, path: Path) -> None:
        refs = self.policy.call("load_checkpoint", str(path / "policy"))
        if self.critic is not None:
            refs += self.critic.call("load_checkpoint", str(path / "critic"))
        self.get(refs)

    def save_policy_hf(self, path: Path) -> None:
        self.get(self.policy.call("save_hf", str(path)))

    def shutdown(self) -> None:
        import ray

        for pool in [self.rollout, *self.rewards]:
            pool.kill()
        ray.kill(self.reference, no_restart=True)
        self.policy.kill()
        if self.critic is not None:
            self.critic.kill()
        self.placement.remove()
