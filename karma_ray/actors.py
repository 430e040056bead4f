"""Actors that survive their own deaths: `ActorPool` (fan a call out to N actors, relaunch a dead one
and retry its call) and `RestartBudget` (how many relaunches a run allows).

Used by PPO's roles (rollout engines, reward models) and evaluation's model replicas. Ray is imported
inside the methods, so `import karma_ray.actors` stays light.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


class ActorPool:
    """N actors made by `launch(i)`; `run(call)` fans a call out and replaces actors that died.

    `call(actor, i)` returns an ObjectRef. When an actor is dead (ActorDiedError / unavailable), it is
    relaunched, `on_replace(i, actor)` runs (e.g. a weight resync), and its call is retried.
    """

    def __init__(self, role: str, n: int, launch: Callable[[int], Any], restart_budget: "RestartBudget") -> None:
        import ray

        self.role = role
        self.launch = launch
        self.actors = [launch(i) for i in range(n)]
        self.budget = restart_budget
        self.on_replace: Optional[Callable[[int, Any], None]] = None
        ray.get([a.ready.remote() for a in self.actors])

    def submit(self, call: Callable[[Any, int], Any], indices: Optional[list[int]] = None) -> dict[int, Any]:
        """Fan out: {actor index: ObjectRef}."""
        indices = list(range(len(self.actors))) if indices is None else indices
        return {i: call(self.actors[i], i) for i in indices}

    def collect(self, refs: dict[int, Any], call: Callable[[Any, int], Any]) -> list[Any]:
        """Results in index order; a dead actor is replaced and its call re-submitted."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        pending, results = dict(refs), {}
        while pending:
            i, ref = next(iter(pending.items()))
            try:
                results[i] = ray.get(ref)
                del pending[i]
            except (ActorDiedError, ActorUnavailableError) as exc:
                self.replace(i, reason=type(exc).__name__)
                pending[i] = call(self.actors[i], i)
        return [results[i] for i in refs]

    def run(self, call: Callable[[Any, int], Any], indices: Optional[list[int]] = None) -> list[Any]:
        return self.collect(self.submit(call, indices), call)

    def replace(self, i: int, reason: str) -> None:
        import ray

        self.budget.spend(f"{self.role}[{i}]", reason)
        with contextlib.suppress(Exception):  # already gone
            ray.kill(self.actors[i], no_restart=True)
        actor = self.launch(i)
        ray.get(actor.ready.remote())
        self.actors[i] = actor
        if self.on_replace is not None:
            self.on_replace(i, actor)

    def kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)


@dataclass
class RestartBudget:
    """How many actor deaths a run survives, shared by every pool of the run; each restart is logged."""

    limit: int
    used: int = 0
    log: list = field(default_factory=list)
    limit_name: str = "run.max_actor_restarts"  # the config key that sets `limit`, for the error message

    def spend(self, who: str, reason: str) -> None:
        if self.used >= self.limit:
            raise RuntimeError(f"{who} died ({reason}) and the restart budget ({self.limit_name}={self.limit}) is spent")
        self.used += 1
        self.log.append({"actor": who, "reason": reason, "time": time.time()})
        print(f"[karma] replacing {who} ({reason}); restarts so far: {self.used}", flush=True)
