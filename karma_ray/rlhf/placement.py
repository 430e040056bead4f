"""Where the PPO roles run: placement groups built from the config, colocated or disaggregated.

Nothing about resources is hard-coded in a decorator: every actor's CPUs/GPUs come from the config,
and this module turns them into placement groups.

- disaggregated: one placement group per role, one bundle per actor (roles never share devices;
  the usual layout when the policy, engines and reward models each fill whole GPUs).
- colocated: ONE placement group whose bundle j holds actor j of every role (the policy worker,
  critic worker, engine ... of rank j share a device and take turns, as in OpenRLHF's colocate mode
  and veRL's hybrid engine); bundle j's size is the sum of what those actors ask for.

`plan_placement` is pure (testable without Ray); `create_placement` reserves the groups and fails
with a clear message when the cluster cannot satisfy them in time, instead of waiting forever.
"""

from __future__ import annotations

import os

from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Optional


@dataclass(frozen=True)
class RoleRequest:
    role: str
    count: int  # actors
    cpus: float  # per actor
    gpus: float  # per actor

    def resources(self) -> dict[str, float]:
        out = {"CPU": self.cpus}
        if self.gpus:
            out["GPU"] = self.gpus
        return out


@dataclass
class PlacementPlan:
    mode: str
    strategy: str
    groups: dict[str, list[dict[str, float]]]  # group name -> bundles
    slots: dict[str, list[tuple[str, int]]]  # role -> per actor (group name, bundle index)
    requests: dict[str, RoleRequest] = field(default_factory=dict)

    def total(self) -> dict[str, float]:
        out: Counter[str] = Counter()
        for bundle in chain.from_iterable(self.groups.values()):
            out.update(bundle)
        return dict(out)


def plan_placement(mode: str, strategy: str, requests: list[RoleRequest]) -> PlacementPlan:
    requests = [r for r in requests if r.count > 0]
    for r in requests:
        if r.cpus < 0 or r.gpus < 0 or r.cpus + r.gpus <= 0:
            raise ValueError(f"role {r.role}: each actor needs some CPU or GPU (got cpus={r.cpus}, gpus={r.gpus})")
    groups: dict[str, list[dict[str, float]]] = {}
    slots: dict[str, list[tuple[str, int]]] = {}
    if mode == "disaggregated":
        for r in requests:
            groups[r.role] = [r.resources() for _ in range(r.count)]
            slots[r.role] = [(r.role, i) for i in range(r.count)]
    elif mode == "colocated":
        bundles: list[Counter[str]] = [Counter() for _ in range(max(r.count for r in requests))]
        for r in requests:
            slots[r.role] = [("shared", i) for i in range(r.count)]
            for i in range(r.count):
                bundles[i].update(r.resources())
        groups["shared"] = [dict(b) for b in bundles]
    else:
        raise ValueError(f"unknown placement mode {mode!r}")
    return PlacementPlan(mode, strategy, groups, slots, {r.role: r for r in requests})


class PlacementError(RuntimeError):
    """The cluster cannot host the requested roles."""


class Placement:
    """Reserved placement groups of a plan; `options_for(role, i)` gives an actor's `.options(...)`."""

    def __init__(self, plan: PlacementPlan, groups: dict[str, Any]) -> None:
        self.plan = plan
        self.groups = groups

    def options_for(self, role: str, index: int) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group_name, bundle = self.plan.slots[role][index]
        req = self.plan.requests[role]
        return {
            "num_cpus": req.cpus,
            "num_gpus": req.gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.groups[group_name], placement_group_bundle_index=bundle
            ),
        }

    def group_and_bundles(self, role: str) -> tuple[Any, list[int]]:
        """The placement group and bundle index of each actor of `role` (for WorkerGroup)."""
        (name,) = {g for g, _ in self.plan.slots[role]}
        return self.groups[name], [b for _, b in self.plan.slots[role]]

    def remove(self) -> None:
        from ray.util import remove_placement_group

        for pg in self.groups.values():
            remove_placement_group(pg)


# Set by a Ray Tune trial that runs PPO (rlhf.sweep, the experiment's matrix): the trial id, appended
# to the names of the placement groups the run creates. Placement groups belong to the job, not to the
# actor that created them (measured: one made by an actor ray.kill-ed stays CREATED), so a trial that
# Tune stops or loses keeps its CPUs reserved until the driver removes them by this name.
OWNER_ENV = "KARMA_PLACEMENT_OWNER"


def create_placement(plan: PlacementPlan, timeout_s: float) -> Placement:
    import ray
    from ray.util import placement_group

    owner = os.environ.get(OWNER_ENV, "")
    suffix = f"-{owner}" if owner else ""
    groups = {name: placement_group(bundles, strategy=plan.strategy, name=f"karma-{name}{suffix}")
              for name, bundles in plan.groups.items()}
    placement = Placement(plan, groups)
    ready, _ = ray.wait([pg.ready() for pg in groups.values()], num_returns=len(groups), timeout=timeout_s)
    if len(ready) < len(groups):
        placement.remove()
        have = ray.cluster_resources()
        raise PlacementError(
            f"placement groups not ready after {timeout_s:.0f} s: the run asks for {plan.total()} "
            f"({plan.mode}; per group {plan.groups}) and the cluster has "
            f"{ {k: v for k, v in have.items() if k in ('CPU', 'GPU')} }. Lower the per-role cpus/gpus or add nodes."
        )
    return placement


def check_fits(plan: PlacementPlan, cluster: dict[str, float]) -> Optional[str]:
    """A message when the plan can never fit `cluster` (a fixed cluster without autoscaling), else None."""
    short = {k: (v, cluster.get(k, 0.0)) for k, v in plan.total().items() if v > cluster.get(k, 0.0) + 1e-9}
    return "; ".join(f"{k}: needs {v:g}, cluster has {h:g}" for k, (v, h) in short.items()) or None


def remove_owned_placement_groups(owner: str) -> None:
    """Remove every live placement group whose name ends in `-<owner>` (see OWNER_ENV)."""
    from ray.util import get_placement_group, placement_group_table, remove_placement_group

    for _ in range(64):  # names may repeat (a retried trial): take them one lookup at a time
        live = [info["name"] for info in placement_group_table().values()
                if owner and (info.get("name") or "").endswith(f"-{owner}") and info.get("state") != "REMOVED"]
        if not live:
            break
        remove_placement_group(get_placement_group(live[0]))


def release_placement_groups_callback() -> Any:
    """A Tune callback that removes the placement groups a finished, stopped or failed trial's PPO
    roles created. Placement groups belong to the job, not to the trial actor that made them, so
    a trial ASHA stops (its actor is killed) would otherwise keep its CPUs reserved forever and
    the next trial would wait for them. Each trial sets OWNER_ENV to its id, so its PPO roles'
    groups are named `karma-<group>-<trial id>`: that is how they are found. A trial Tune retries
    (a lost node) is released before its retry starts."""
    from ray import tune

    class ReleasePlacementGroups(tune.Callback):
        def _release(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            remove_owned_placement_groups(trial.trial_id)

        on_trial_complete = on_trial_error = on_trial_recover = _release

    return ReleasePlacementGroups()
