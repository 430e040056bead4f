"""Starting or joining a Ray cluster from a RayConfig (the only place that calls ray.init)."""

from __future__ import annotations

import os
from pathlib import Path

from karma_ray.config import RayConfig

# Environment every worker needs; values already set by the user (or a job's runtime_env) win.
_WORKER_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # transformers draws a "Loading weights" bar in every actor that loads a model; the driver's
    # console shows one line and one bar per stage.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # vLLM logs every engine start, sync and shutdown at INFO from inside its actor; warnings still show.
    "VLLM_LOGGING_LEVEL": "WARNING",
    # Arrow's default jemalloc pool kept freed memory in long-lived workers: one Ray Data shuffle
    # worker grew to ~2 GiB on 4M comments (0.9 GiB peak per worker with the system allocator,
    # measured with benchmarks/bench_prepare.py), so corpus-sized runs did not stay flat.
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


def pin_cluster_address() -> None:
    """Every worker's setup hook (`init_ray`): RAY_ADDRESS names the worker's own cluster.

    Ray's State API, called with no address (Ray Train's PlacementGroupCleaner does, to learn whether
    a trial's controller is still alive), otherwise looks for the cluster among those running on the
    machine and fails when it finds several, e.g. `make test` beside `make demo`. The worker placement
    group of a trial that ASHA stopped then stayed reserved, and the next run waited for its CPUs
    forever (tests/integration/test_reward_sweep.py)."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def session_log_dir() -> Path:
    """The connected Ray session's log folder (workers' stdout/stderr live there)."""
    try:  # no public API names the session folder; this is what `ray.init` prints from
        from ray._private import worker

        return Path(worker._global_node.get_session_dir_path()) / "logs"
    except Exception:  # noqa: BLE001 - a display hint only; Ray's documented default
        return Path("/tmp/ray/session_latest/logs")


def init_ray(cfg: RayConfig) -> None:
    """Join `cfg.address` (or $RAY_ADDRESS, set inside `ray job submit`), else start a local cluster.

    A local cluster's dashboard binds to cfg.dashboard_host (loopback by default).
    """
    import ray

    if ray.is_initialized():
        return
    env_vars = {k: os.environ.get(k, v) for k, v in _WORKER_ENV_DEFAULTS.items()}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"runtime_env": {"env_vars": env_vars, "worker_process_setup_hook": f"{__name__}.pin_cluster_address"},
                    "log_to_driver": cfg.log_to_driver}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=int(cfg.object_store_memory_gb * 2**30) if cfg.object_store_memory_gb else None,
            include_dashboard=cfg.include_dashboard,
            dashboard_host=cfg.dashboard_host,
            **kwargs,
        )
