"""What every stage shares about its output folder: one policy, one error type, one completion record.

A stage (`run_prepare`, `run_train_rm`, `run_sweep`, `run_sft`, PPO) claims its folder with
`claim_output` before any cluster work and records `karma_stage.json` in it: the stage's name, the
digest of its resolved config and inputs, and whether it finished. A caller (the coming experiment)
asks `stage_state(folder, stage, digest)` to tell a stage that finished with this config from one
that is stale (another config), partial (started, never finished) or absent, and skips finished ones.

The policy, the same for every stage:
- an absent or empty folder is created;
- a non-empty folder is refused with `OutputExistsError`, unless `resume` (stages that can resume
  continue in it) or `overwrite` (it is removed, but only when it is recognizably a stage output:
  a record of ours, or the stage's own files; a folder of something else is never deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional

STAGE_FILE = "karma_stage.json"
State = Literal["absent", "partial", "finished", "stale"]


class OutputExistsError(FileExistsError):
    """A stage's output folder is in the way (not empty, and neither resume nor overwrite applies)."""


@dataclass(frozen=True)
class StageRecord:
    stage: str
    config_digest: str
    state: str  # "running" | "finished"
    started_at: float
    finished_at: Optional[float] = None
    result: Optional[dict] = None  # the stage's headline numbers, when finished


def config_digest(cfg: Any, inputs: Iterable[Any] = ()) -> str:
    """sha256 of the resolved config (as plain data) and the stage's inputs, 16 hex digits."""
    from karma_ray.config import to_dict

    payload = {"config": to_dict(cfg), "inputs": [str(i) for i in inputs]}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_stage(output: str | os.PathLike) -> Optional[StageRecord]:
    path = Path(output) / STAGE_FILE
    if not path.is_file():
        return None
    try:
        return StageRecord(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # unreadable: treated as no record (the folder is then "partial")


def stage_state(output: str | os.PathLike, stage: str, digest: str) -> State:
    out = Path(output)
    if not out.is_dir() or not any(out.iterdir()):
        return "absent"
    record = read_stage(out)
    if record is None or record.state != "finished":
        return "partial"
    return "finished" if (record.stage, record.config_digest) == (stage, digest) else "stale"


def _write(output: Path, stage: str, digest: str, state: str, result: Optional[dict] = None) -> StageRecord:
    """Record `stage` in `output` (a resumed run keeps its start time)."""
    previous = read_stage(output)
    started = previous.started_at if previous and previous.stage == stage else time.time()
    record = StageRecord(stage=stage, config_digest=digest, state=state, started_at=started,
                         finished_at=time.time() if state == "finished" else None, result=result)
    tmp = output / (STAGE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2, default=str) + "\n")
    os.replace(tmp, output / STAGE_FILE)  # a reader never sees half a record
    return record


def claim_output(
    output: str | os.PathLike,
    stage: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resumable: bool = True,
    recognizes: Callable[[Path], bool] = lambda p: False,
    dry_run: bool = False,
) -> Path:
    """Apply the output policy (module docstring); `dry_run` checks without creating or deleting.

    `recognizes(folder)` says whether a folder without a record is this stage's output all the same
    (written before records existed), so `overwrite` may remove it.
    """
    out = Path(output)
    if resume and not resumable:
        raise OutputExistsError(f"{stage} cannot resume; pass --overwrite to start {out} over")
    if out.is_file():
        raise OutputExistsError(f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        record = read_stage(out)
        what = f"a {record.stage} run ({record.state})" if record else "files"
        if not overwrite:
            hint = "--resume to continue it or --overwrite" if resumable else "--overwrite"
            raise OutputExistsError(f"{out} already holds {what}; pass {hint} to replace it, or choose a new --output")
        if record is None and not recognizes(out):
            raise OutputExistsError(f"refusing to overwrite {out}: it does not look like a {stage} output")
        if not dry_run:
            shutil.rmtree(out)
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
    return out


def begin_stage(output: str | os.PathLike, stage: str, digest: str) -> StageRecord:
    """Record a stage as running (a resumed run keeps its start time; a finished one is reopened)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    return _write(out, stage, digest, "running")


def finish_stage(output: str | os.PathLike, stage: str, digest: str, result: Optional[dict] = None) -> StageRecord:
    """Mark the stage finished with this config: written last, after every output file."""
    return _write(Path(output), stage, digest, "finished", result)
