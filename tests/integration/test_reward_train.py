"""`karma train-rm` on Ray Train (CPU, gloo): a 2-worker run, resume, and recovery from a killed worker."""

import json

import pytest

from karma_ray.reward.cli import train_rm_main
from karma_ray.reward.scorer import RewardScorer
from karma_ray.training import faults

pytestmark = pytest.mark.ray

SMALL = ["ray.progress_bars=false", "model.max_length=96", "train.eval_batch_size=128", "scaling.cpus_per_worker=1"]


def train(prepared, out, *overrides, resume=False):
    argv = ["--data", str(prepared), "--output", str(out), *SMALL, *overrides] + (["--resume"] if resume else [])
    assert train_rm_main(argv) == 0
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "train_summary.json").read_text())


def test_two_workers_train_text_meta_with_both_losses(ray_cluster, prepared_synthetic, tiny_rm_backbones, tmp_path):
    out = tmp_path / "rm"
    metrics, summary = train(
        prepared_synthetic, out, f"model.backbone={tiny_rm_backbones['bert']}", "input.variant=text_meta",
        "scaling.num_workers=2", "loss.pairwise_weight=1.0", "train.epochs=2", "train.max_train_examples=1200",
        # a slow backbone rate and a fast head rate: in 2 short epochs the metadata MLP learns, the
        # random-init text part stays small instead of adding noise
        "train.lr=0.0001", "train.head_lr=0.003", "train.select_checkpoint=last",
    )
    for split in ("val", "test"):
        assert {"spearman", "pearson", "pairwise_accuracy", "mse"} <= set(metrics[split])
        assert metrics[split]["n"] > 300 and metrics[split]["n_pairs"] > 50
        assert metrics[split]["by_subreddit"], "per-subreddit breakdown"
    # the planted reply-delay / subreddit effects are learned by the metadata part within 2 short epochs
    assert metrics["test"]["spearman"] > 0.08  # measured 0.11 (seeded); a random model is ~0
    assert summary["epochs_run"] == 2 and summary["exported_epoch"] == 2
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    # 1200 examples over 2 workers at batch 32 = 19 steps per worker per epoch
    assert summary["history"][-1]["step"] == 2 * 19
    assert sorted(p.name for p in (out / "ray" / "train_rm").glob("epoch_*")) == ["epoch_0001", "epoch_0002"]
    assert (out / "config.yaml").exists()
    scorer = RewardScorer.from_pretrained(out)
    assert scorer.variant == "text_meta"
    assert len(scorer.score(["[title] a"], ["b"], [{"hour": 3}])) == 1


def test_resume_continues_from_the_checkpointed_epoch(ray_cluster, prepared_synthetic, tmp_path):
    out = tmp_path / "rm"
    common = ["input.variant=meta", "train.max_train_examples=600", "train.select_checkpoint=last"]
    _, first = train(prepared_synthetic, out, *common, "train.epochs=1")
    assert first["epochs_run"] == 1 and first["resumed_from_epoch"] == 0
    assert train_rm_main(["--data", str(prepared_synthetic), "--output", str(out), *SMALL, *common]) == 2  # no --resume: refused
    _, second = train(prepared_synthetic, out, *common, "train.epochs=3", resume=True)
    assert second["resumed_from_epoch"] == 1 and second["epochs_run"] == 3
    # the step counter carries on from the checkpoint: 600 / 32 -> 19 steps per epoch
    assert [h["step"] for h in second["history"]] == [19, 38, 57]


def test_a_killed_worker_is_recovered_from_the_last_checkpoint(ray_cluster, prepared_synthetic, tmp_path, monkeypatch):
    out = tmp_path / "rm"
    monkeypatch.setenv(faults.ENV, "25:1")  # rank 1 SIGKILLs itself after step 25 (test-only, not a config key)
    # 2 workers x 320 examples at batch 32 = 10 steps per epoch: step 25 is inside epoch 3. Ray Train
    # registers a reported checkpoint when its controller next polls the workers (every 2 s), so a
    # worker dying within ~2 s of a report may fall back to the checkpoint before it: epoch 1 or 2 here.
    metrics, summary = train(
        prepared_synthetic, out, "input.variant=meta", "scaling.num_workers=2", "train.max_train_examples=640",
        "train.epochs=3", "scaling.max_failures=1",
        "train.select_checkpoint=last",
    )
    assert "killed rank 1 after step 25" in (out / faults.MARKER).read_text()  # the worker did die
    assert summary["epochs_run"] == 3 and summary["resumed_from_epoch"] in (1, 2)  # restarted from a checkpoint
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["history"][-1]["step"] == 30  # no step lost or repeated in the record
    # the planted context x reply signal survives the kill and resume (a random model scores ~0)
    assert metrics["test"]["spearman"] > 0.05
