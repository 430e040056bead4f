"""Shared fixtures: paths to ../shared/data (tests that need it skip with a reason when it is absent)
and one local Ray cluster per test session (ray.init costs seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("KARMA_SHARED_DATA", REPO.parent / "shared" / "data"))
PUSHSHIFT = SHARED_DATA / "reddit" / "pushshift"
CONVOKIT = SHARED_DATA / "reddit" / "convokit_sample"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (tests read ../shared/data; set KARMA_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray cluster shared by all tests that ask for it."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 2**20, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
