"""A group of N Ray actors of one worker class, one per data-parallel rank (policy, critic).

    group = WorkerGroup(PolicyWorker, num_workers=2, init_kwargs={"model": m, "trainer": t, "algo": a, "seed": 0},
                        num_cpus=1, placement_group=pg, bundle_indices=[0, 1])
    group.wait_ready()
    stats = ray.get(group.call("train_step", exp_ref))[0]

Resources come from the caller (TrainerConfig via the placement code), never from a decorator:
`ray.remote(cls).options(num_cpus=..., num_gpus=..., scheduling_strategy=...)`.

Rendezvous: before any worker starts, a tiny task runs where rank 0 will run (rank 0's placement
bundle, or without a placement group a node with room for one worker, to which rank 0 is then pinned)
and returns that node's IP and a free port; every rank gets them as master_addr/master_port.
The workers' constructors join the process group, so they must all be created together: the
constructor calls are fanned out, then `wait_ready` waits for all of them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy


def _rendezvous_address() -> tuple[str, int, str]:
    """(node IP, free port, node id) where this task runs."""
    from karma_ray.rlhf.workers.distributed import free_port

    return ray.util.get_node_ip_address(), free_port(), ray.get_runtime_context().get_node_id()


class WorkerGroup:
    """N actors of `worker_cls`, constructed as worker_cls(**init_kwargs, rank=r, world_size=N,
    master_addr=..., master_port=...)."""

    def __init__(
        self,
        worker_cls: type,
        num_workers: int,
        init_kwargs: Optional[dict[str, Any]] = None,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        placement_group: Any = None,
        bundle_indices: Optional[Sequence[int]] = None,
        runtime_env: Optional[dict[str, Any]] = None,
    ) -> None:
        self.name = worker_cls.__name__

        env = dict(runtime_env or {})
        env_vars = dict(env.get("env_vars", {}))
        if num_gpus == 0:
            # DeepSpeed picks its accelerator at import; a CPU worker must not probe for CUDA.
            env_vars.setdefault("DS_ACCELERATOR", "cpu")
        env["env_vars"] = env_vars

        # The rendezvous probe runs where rank 0 will run: inside rank 0's bundle (0 CPUs: the
        # bundle's resources are the worker's), or anywhere a worker fits, and then rank 0 is pinned
        # to that node.
        if placement_group is not None:
            bundle_indices = list(range(num_workers)) if bundle_indices is None else list(bundle_indices)
            if len(bundle_indices) != num_workers:
                raise ValueError(f"{len(bundle_indices)} bundle indices for {num_workers} workers")
            strategies: list[Any] = [
                PlacementGroupSchedulingStrategy(placement_group=placement_group, placement_group_bundle_index=b)
                for b in bundle_indices
            ]
            probe_opts: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": strategies[0]}
        elif bundle_indices is not None:
            raise ValueError("bundle_indices need a placement_group")
        else:
            strategies = [None] * num_workers
            probe_opts = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        addr, port, node_id = ray.get(ray.remote(_rendezvous_address).options(**probe_opts).remote())
        if placement_group is None:
            strategies[0] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        remote_cls = ray.remote(worker_cls)
        self.actors = [
            remote_cls.options(num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy=strategy, runtime_env=env)
            .remote(**(init_kwargs or {}), rank=rank, world_size=num_workers, master_addr=addr, master_port=port)
            for rank, strategy in enumerate(strategies)
        ]

    def wait_ready(self, timeout_s: Optional[float] = None) -> None:
        """Block until every worker's constructor finished (raises its error if one failed)."""
        refs = [a.__ray_ready__.remote() for a in self.actors]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if pending:
            raise TimeoutError(
                f"{len(pending)} of {len(refs)} {self.name} workers not ready after {timeout_s} s "
                "(not enough free resources, or a rank failed to join the process group)"
            )
        ray.get(ready)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Fan `method(*args, **kwargs)` out to every rank; returns the ObjectRefs in rank order."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
