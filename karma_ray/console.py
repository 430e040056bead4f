"""What a person sees while a multi-stage job runs: one line and one progress bar per stage.

Ray's own output goes to files: workers' stdout/stderr stay in the session's log folder (Ray's
`log_to_driver` off) and the driver's `ray` loggers write to OUTPUT/logs/ray_driver.log. A stage
running on Ray Tune drives its bar from a Tune callback (`TuneProgress`), one tick per finished trial;
a Ray Train stage from the step count its rank 0 writes to a file (`follow_steps`).

    quiet_ray(output / "logs")           # before ray.init
    with stage_bar("6 ppo", total=6, unit="cell") as bar:
        tuner = tune.Tuner(..., run_config=tune.RunConfig(callbacks=[TuneProgress(bar)], verbose=0))
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

RAY_DRIVER_LOG = "ray_driver.log"


# Loggers of the libraries whose records belong in the log file, not on the console.
QUIET_LOGGERS = ("ray", "deepspeed", "DeepSpeed", "vllm", "torch.distributed")
_handlers: dict[Path, logging.Handler] = {}


def quiet_ray(log_dir: Path) -> Path:
    """Send the driver's Ray (Data, Train, Tune), DeepSpeed and vLLM log records to
    LOG_DIR/ray_driver.log instead of the console; returns the file. Idempotent: call it before
    `ray.init` and again at each stage's start, since Ray Data, DeepSpeed and Ray's own init attach
    their console handlers when they are first imported or started."""
    path = (Path(log_dir) / RAY_DRIVER_LOG).resolve()
    handler = _handlers.get(path)
    if handler is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _handlers[path] = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    names = set(QUIET_LOGGERS) | {n for n in logging.root.manager.loggerDict if n.split(".")[0] in QUIET_LOGGERS}
    for name in names:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):  # the console ones
                logger.removeHandler(h)
        if name in QUIET_LOGGERS and handler not in logger.handlers:
            logger.addHandler(handler)
            logger.propagate = False
        elif name not in QUIET_LOGGERS and logger.handlers and handler not in logger.handlers:
            logger.addHandler(handler)  # a child with handlers of its own (ray.data) does not propagate
    # Tune's new console output honours verbose=0 except for its start banner: the legacy reporter
    # prints nothing at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return path


@contextlib.contextmanager
def stage_bar(desc: str, total: int, unit: str = "it") -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, leave=True)
    try:
        yield bar
    finally:
        bar.close()


def _written_step(path: Path) -> int:
    """The step count in `path`; 0 while it is absent or half-written."""
    try:
        return int(Path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def follow_steps(path: Path, total: int, desc: str, poll_s: float = 0.5) -> Iterator[Any]:
    """A bar of `total` steps that follows the step count a training loop writes to `path` (its
    workers' stdout goes to Ray's log files, so the driver reads the count from disk), until the
    block ends; then it shows the last count written."""
    import threading

    done = threading.Event()
    with stage_bar(desc, total, unit="step") as bar:

        def catch_up() -> None:
            step = min(_written_step(path), total)
            if step > bar.n:
                bar.update(step - bar.n)

        def follow() -> None:
            while not done.wait(poll_s):
                catch_up()

        thread = threading.Thread(target=follow, name=f"{desc}-progress", daemon=True)
        thread.start()
        try:
            yield bar
        finally:
            done.set()
            thread.join()
            catch_up()


def tune_progress(bar: Any) -> Any:
    """A Tune callback that ticks `bar` once per trial that completes or errors, and shows the last
    finished trial's name and state. Tune's own console output is then off: its new output engine
    prints a start banner even at verbose=0, the legacy one (RAY_AIR_NEW_OUTPUT=0) nothing."""
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    class TuneProgress(tune.Callback):
        # Tune pickles its callbacks into the experiment folder (for Tuner.restore): the bar holds
        # the console stream, which cannot be pickled, so it stays out of the state; a restored
        # callback ticks nothing.
        def __init__(self, bar: Any) -> None:  # an argument, not a closure: cloudpickle would carry it
            self.bar = bar

        def __getstate__(self) -> dict:
            return {}

        def __setstate__(self, state: dict) -> None:
            self.bar = None

        def _tick(self, trial: Any, state: str) -> None:
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(f"{_trial_label(trial)}: {state}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._tick(trial, "done")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._tick(trial, "FAILED")

    return TuneProgress(bar)


def _trial_label(trial: Any) -> str:
    config = getattr(trial, "config", {}) or {}
    spec = config.get("spec") if isinstance(config.get("spec"), dict) else {}
    for key in ("cell", "variant", "name"):
        if key in config:
            return str(config[key])
        if key in spec:  # the reward-model sweep's grid point
            return str(spec[key])
    return str(getattr(trial, "trial_id", "trial"))
