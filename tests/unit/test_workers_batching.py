"""Pure parts of the PPO workers' update loop: loss shares, micro-batch plans, buckets, RNG state."""

from __future__ import annotations

import random

import pytest
import torch

from karma_ray.engines.weight_sync import iter_buckets

from karma_ray.algo import aggregate_loss
from karma_ray.rlhf.workers.distributed import (
    loss_count,
    loss_share,
    micro_plan,
    rng_state,
    row_chunks,
    set_rng_state,
)


def test_loss_count_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert loss_count(mask, "token-mean") == 3.0
    assert loss_count(mask, "seq-mean-token-sum") == 2.0  # the empty row is not a sequence of the mean
    assert loss_share(mask[:1], mask, "token-mean") == pytest.approx(2 / 3)
    assert loss_share(mask[:1], mask, "seq-mean-token-mean") == pytest.approx(1 / 2)
    assert loss_share(mask[1:2], mask, "token-mean") == 0.0


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_shares_recombine_micro_losses_into_the_minibatch_loss(agg):
    """What makes gradient accumulation over micro-batches and ranks equal one big batch."""
    g = torch.Generator().manual_seed(1)
    losses = torch.randn(10, 7, generator=g)
    mask = (torch.rand(10, 7, generator=g) > 0.4).float()
    mask[3] = 0.0
    whole = aggregate_loss(losses, mask, agg)
    parts = [
        loss_share(mask[i], mask, agg) * aggregate_loss(losses[i], mask[i], agg)
        for rank in range(2)
        for i in row_chunks(5, 2)
        for i in [torch.arange(rank, 10, 2)[i]]  # rank's rows, then its micro-batches
    ]
    assert float(sum(parts)) == pytest.approx(float(whole), abs=1e-6)


def test_micro_plan_and_chunks():
    assert micro_plan(16, 2, 3) == (8, 3)  # 8 rows per rank: micro-batches of 3, 3, 2
    assert [len(c) for c in row_chunks(8, 3)] == [3, 3, 2]
    with pytest.raises(ValueError, match="multiple"):
        micro_plan(6, 4, 1)


def test_buckets_respect_the_bound_and_keep_every_tensor_in_order():
    named = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([10, 30, 5, 100, 1, 1])]  # float32: 4 bytes each
    buckets = list(iter_buckets(iter(named), bucket_bytes=160))
    assert [list(b) for b in buckets] == [["t0", "t1"], ["t2"], ["t3"], ["t4", "t5"]]
    for b in buckets:
        size = sum(t.numel() * 4 for t in b.values())
        assert size <= 160 or len(b) == 1  # only a single oversized tensor may exceed the bound


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    import numpy as np

    shuffle = torch.Generator().manual_seed(5)
    torch.save(rng_state(shuffle), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), torch.randperm(9, generator=shuffle).tolist())
    fresh = torch.Generator().manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), fresh)
    again = (random.random(), float(np.random.rand()), float(torch.rand(1)), torch.randperm(9, generator=fresh).tolist())
    assert again == expected
