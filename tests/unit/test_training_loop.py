"""The shared training loop (karma_ray/training/loop.py) on a hand-countable task, in one process
(LocalSession stands in for Ray Train's two calls: latest checkpoint, report). Reward-model training
and SFT run the same loop on Ray Train (tests/integration/test_reward_train.py, test_sft_ray.py)."""

import json
import math
from pathlib import Path

import pytest

from karma_ray.training.loop import LocalSession, LoopPlan, LoopState, StepSums, run_loop


class CountingTask:
    """Micro-batch k of epoch e is the number 10*e + k; a step's loss is the mean of its numbers."""

    def __init__(self, micro_per_epoch: int) -> None:
        self.micro_per_epoch = micro_per_epoch
        self.trained: list[list[int]] = []  # the micro-batches of every optimizer step, in order
        self.evaluations = 0

    def micro_batches(self, epoch, skip):
        for k in range(skip, self.micro_per_epoch):
            yield 10 * epoch + k

    def train_step(self, micro_batches):
        self.trained.append(list(micro_batches))
        return StepSums(loss_sum=float(sum(micro_batches)), loss_count=float(len(micro_batches)), samples=len(micro_batches),
                        tokens=3 * len(micro_batches), grad_norm=1.0, lr=0.1)

    def evaluate(self):
        self.evaluations += 1
        return {"loss": float(len(self.trained)), "n": 4}

    def save(self, folder: Path, writer: bool) -> None:
        if writer:
            (folder / "trained.json").write_text(json.dumps(self.trained))

    def load(self, folder: Path) -> None:
        self.trained = json.loads((folder / "trained.json").read_text())


def test_steps_reports_and_checkpoints_follow_the_plan(tmp_path):
    # 5 micro-batches an epoch, 2 a step: 2 steps an epoch, the 5th micro-batch dropped
    task = CountingTask(micro_per_epoch=5)
    plan = LoopPlan(stage="t", epochs=100, total_steps=7, grad_accum=2, log_every_steps=3, checkpoint_every_steps=4,
                    eval_before=True, eval_after=True)
    session = LocalSession(tmp_path)
    state = run_loop(task, plan, rank=0, session=session)
    assert task.trained == [[0, 1], [2, 3], [10, 11], [12, 13], [20, 21], [22, 23], [30, 31]]
    assert [(m["step"], m["epoch"], name) for m, name in session.reports] == [
        (3, 2, None), (4, 2, "checkpoint_000004"), (6, 3, None), (7, 4, "checkpoint_000007_final")]
    # the loss of a report is the mean of the numbers since the last one: steps 1-3, 4, 5-6, 7
    assert [m["loss"] for m, _ in session.reports] == [pytest.approx(v) for v in (
        (0 + 1 + 2 + 3 + 10 + 11) / 6, (12 + 13) / 2, (20 + 21 + 22 + 23) / 4, (30 + 31) / 2)]
    assert state.samples_seen == 14 and state.tokens_seen == 42 and state.finished
    assert state.val_before == {"loss": 0.0, "n": 4} and state.val_after == {"loss": 7.0, "n": 4}
    final = session.reports[-1][0]
    assert final["val_loss"] == 7.0 and final["val_n"] == 4 and "val_loss" not in session.reports[0][0]
    assert [h["step"] for h in state.history] == [3, 4, 6, 7]
    assert LoopState.read(tmp_path / "checkpoint_000007_final").history == state.history


def test_a_run_stopped_and_resumed_takes_the_steps_of_an_uninterrupted_one(tmp_path):
    plan = dict(stage="t", epochs=100, grad_accum=2, log_every_steps=2, checkpoint_every_steps=3, eval_before=True, eval_after=True)
    whole = CountingTask(micro_per_epoch=5)
    whole_state = run_loop(whole, LoopPlan(total_steps=8, **plan), rank=0, session=LocalSession(tmp_path / "whole"))

    first = CountingTask(micro_per_epoch=5)
    (tmp_path / "parts").mkdir()
    run_loop(first, LoopPlan(total_steps=5, **plan), rank=0, session=LocalSession(tmp_path / "parts"))
    second = CountingTask(micro_per_epoch=5)
    session = LocalSession(tmp_path / "parts")
    state = run_loop(second, LoopPlan(total_steps=8, **plan), rank=0, session=session)

    assert second.trained == whole.trained  # restored steps 1-5, then the same micro-batches 6-8
    assert state.restarts == 1 and state.resumed_at_step == 5 and state.step == 8
    assert second.evaluations == 1  # val before was kept from the first run; only val after ran
    assert state.val_before == whole_state.val_before
    assert [h["step"] for h in state.history] == [2, 3, 4, 5, 6, 8]  # 5 was the first run's final
    assert state.samples_seen == whole_state.samples_seen == 16


def test_epoch_plan_evaluates_and_checkpoints_each_epoch_with_no_duplicate_final(tmp_path):
    task = CountingTask(micro_per_epoch=3)
    session = LocalSession(tmp_path)
    state = run_loop(task, LoopPlan(stage="t", epochs=2, eval_every_epoch=True), rank=0, session=session)
    assert [(m["step"], m["epoch"], m["val_loss"], name) for m, name in session.reports] == [
        (3, 1, 3.0, "epoch_0001"), (6, 2, 6.0, "epoch_0002")]
    assert [m["loss"] for m, _ in session.reports] == [pytest.approx(1.0), pytest.approx(11.0)]
    assert state.epoch == 2 and state.micro_in_epoch == 0

    # resumed with a third epoch: it starts at epoch 3 and the record says it resumed after 2
    more = CountingTask(micro_per_epoch=3)
    state = run_loop(more, LoopPlan(stage="t", epochs=3, eval_every_epoch=True), rank=0, session=LocalSession(tmp_path))
    assert more.trained[-3:] == [[20], [21], [22]] and len(more.trained) == 9
    assert state.resumed_at_epoch == 2 and [h["epoch"] for h in state.history] == [1, 2, 3]


def test_a_task_with_no_steps_still_evaluates_once(tmp_path):
    """A reward-model control (random, constant) has no model: one epoch, no step, one evaluation."""
    task = CountingTask(micro_per_epoch=0)
    session = LocalSession(tmp_path)
    state = run_loop(task, LoopPlan(stage="t", epochs=1, eval_every_epoch=True), rank=0, session=session)
    ((metrics, name),) = session.reports
    assert name == "epoch_0001" and metrics["val_loss"] == 0.0 and math.isnan(metrics["loss"])
    assert state.step == 0 and task.evaluations == 1


def test_a_crash_after_a_step_resumes_from_the_last_checkpoint(tmp_path):
    class Crash(Exception):
        pass

    def crash_at(step):
        if step == 5:
            raise Crash

    plan = LoopPlan(stage="t", epochs=100, total_steps=6, log_every_steps=1, checkpoint_every_steps=2)
    task = CountingTask(micro_per_epoch=4)
    with pytest.raises(Crash):
        run_loop(task, plan, rank=0, session=LocalSession(tmp_path), after_step=crash_at)
    again = CountingTask(micro_per_epoch=4)
    state = run_loop(again, plan, rank=0, session=LocalSession(tmp_path))
    assert state.resumed_at_step == 4 and [h["step"] for h in state.history] == [1, 2, 3, 4, 5, 6]
    assert again.trained == [[0], [1], [2], [3], [10], [11]]  # step 5 taken again, once in the record


def test_the_step_count_for_the_console_is_written_and_an_unreachable_file_is_no_error(tmp_path):
    progress = tmp_path / "progress.txt"
    run_loop(CountingTask(micro_per_epoch=4), LoopPlan(stage="t", epochs=1, progress_file=str(progress)), rank=0,
             session=LocalSession(tmp_path))
    assert progress.read_text() == "4\n"
    # a worker on another node with no shared output folder: the bar stays still, training goes on
    state = run_loop(CountingTask(micro_per_epoch=4), LoopPlan(stage="t", epochs=1, progress_file=str(tmp_path / "no" / "p.txt")),
                     rank=0, session=LocalSession(tmp_path / "other"))
    assert state.step == 4
