"""The console helpers: Tune's progress callback survives the pickling Tune does on every fit."""

import io
import logging

import pytest

from karma_ray.console import quiet_ray, stage_bar, tune_progress


class _Trial:
    def __init__(self, config):
        self.config = config
        self.trial_id = "t0"


def test_the_progress_callback_pickles_without_its_bar_and_still_ticks(tmp_path):
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    stream = open(tmp_path / "console.txt", "w")  # like pytest's CaptureIO: a stream that cannot be pickled
    with stream, stage_bar("rm sweep", total=3, unit="trial") as bar:
        bar.fp = stream
        callback = tune_progress(bar)
        restored = cloudpickle.loads(cloudpickle.dumps(callback))
        callback.on_trial_complete(0, [], _Trial({"spec": {"variant": "meta"}}))
        callback.on_trial_error(0, [], _Trial({"cell": "text-base"}))
        restored.on_trial_complete(0, [], _Trial({}))  # no bar after a restore: no tick, no error
        assert bar.n == 2
        assert "text-base: FAILED" in str(bar.postfix)
    assert restored.bar is None


def test_quiet_ray_moves_console_handlers_to_the_file(tmp_path):
    logger = logging.getLogger("ray.data.karma_test")
    console = logging.StreamHandler(io.StringIO())
    logger.addHandler(console)
    path = quiet_ray(tmp_path)
    assert console not in logger.handlers
    logging.getLogger("ray").warning("to the file")
    assert path.read_text().count("to the file") == 1
    assert quiet_ray(tmp_path) == path  # idempotent: still one handler, one line per record
    logging.getLogger("ray").warning("again")
    assert path.read_text().count("again") == 1


def test_follow_steps_ticks_to_the_count_the_loop_writes(tmp_path):
    import time

    from karma_ray.console import follow_steps

    progress = tmp_path / "progress.txt"
    with follow_steps(progress, total=10, desc="sft", poll_s=0.01) as bar:
        time.sleep(0.05)
        assert bar.n == 0  # no file yet: no progress, no error
        progress.write_text("4\n")
        deadline = time.monotonic() + 5
        while bar.n < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bar.n == 4
        progress.write_text("")  # caught mid-write: still 4
        time.sleep(0.05)
        assert bar.n == 4
        progress.write_text("12\n")  # more than the total (a resumed run's count): capped
    assert bar.n == 10
