"""Test-only fault injection for the training loops, switched on by an environment variable (never by
a user-facing config): `KARMA_FAULT_KILL_AT_STEP=STEP[:RANK]` makes the worker of rank RANK (default 0)
SIGKILL itself right after optimizer step STEP, once per output folder (a marker file remembers it),
so that recovery from the last checkpoint can be tested on real Ray Train restarts.

The driver forwards the variable to its Ray Train workers (`forwarded_env`)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ENV = "KARMA_FAULT_KILL_AT_STEP"
MARKER = "fault_worker_killed.marker"


def forwarded_env() -> dict[str, str]:
    """The fault variables of this process, for a worker runtime_env (empty when none is set)."""
    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}


@dataclass(frozen=True)
class FaultInjector:
    kill_at_step: Optional[int]
    kill_rank: int
    rank: int
    marker: Path

    @classmethod
    def from_env(cls, output: str | os.PathLike, rank: int) -> "FaultInjector":
        value = os.environ.get(ENV, "")
        step, _, kill_rank = value.partition(":")
        try:
            return cls(int(step) if step else None, int(kill_rank or 0), rank, Path(output) / MARKER)
        except ValueError:
            raise ValueError(f"{ENV}={value!r}: expected STEP or STEP:RANK (integers)") from None

    def after_step(self, step: int) -> None:
        if self.kill_at_step == step and self.rank == self.kill_rank and not self.marker.exists():
            self.marker.write_text(f"killed rank {self.rank} after step {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)
