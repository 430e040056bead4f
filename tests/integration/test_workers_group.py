"""The policy as a Ray WorkerGroup of 2 DeepSpeed ZeRO-2 ranks (gloo) in a placement group: one
train_step equals a plain single-process torch update, and the weights stream out of rank 0."""

from __future__ import annotations

import pytest
import torch

from karma_ray.rlhf.config import AlgoConfig, ModelConfig, TrainerConfig
from karma_ray.training.config import DeepSpeedConfig

pytestmark = pytest.mark.ray

TRAINER = TrainerConfig(num_workers=2, deepspeed=DeepSpeedConfig(zero_stage=2), micro_batch_size=1, lr=1e-2, weight_decay=0.1, grad_clip=0.0)
ALGO = AlgoConfig(minibatch_size=4, entropy_coef=0.01, kl_placement="loss", kl_coef=0.1, loss_agg="seq-mean-token-sum")


def streamed_weights(ray, group) -> dict[str, torch.Tensor]:
    """Rank 0's streamed buckets; every rank is called (under ZeRO-3 they gather together)."""
    gens = [a.weight_buckets.options(num_returns="streaming").remote(1) for a in group.actors]
    out = {k: v for ref in gens[0] for k, v in ray.get(ref).items()}
    assert not [ref for gen in gens[1:] for ref in gen]  # other ranks yield nothing
    return out


def launch(ray, model_dir, trainer, algo, placement_group=None):
    from karma_ray.rlhf.group import WorkerGroup
    from karma_ray.rlhf.workers.policy import PolicyWorker

    group = WorkerGroup(
        PolicyWorker,
        num_workers=trainer.num_workers,
        init_kwargs={"model": ModelConfig(policy=str(model_dir)), "trainer": trainer, "algo": algo, "seed": 5},
        num_cpus=0.5,
        placement_group=placement_group,
        bundle_indices=None if placement_group is None else [1, 0],  # rank 0 in bundle 1: any order works
    )
    group.wait_ready(timeout_s=300)
    return group


def test_zero2_over_two_ray_workers_equals_a_plain_update(ray_cluster, workers_tiny_llama, workers_experience, workers_plain_ppo_update):
    ray = ray_cluster
    from ray.util import placement_group, remove_placement_group

    pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}])
    ray.get(pg.ready(), timeout=60)
    exp = workers_experience(8, seed=6)
    group = launch(ray, workers_tiny_llama, TRAINER, ALGO, pg)
    try:
        exp_ref = ray.put(exp)
        logps = ray.get(group.call("logprobs", exp.sequences))
        torch.testing.assert_close(logps[0], logps[1], atol=0, rtol=0)
        stats = ray.get(group.call("train_step", exp_ref))
        got = streamed_weights(ray, group)
    finally:
        group.kill()
        remove_placement_group(pg)
    assert stats[0] == stats[1]  # metrics are all-reduced: every rank reports the same numbers
    # ... the speed too: tokens of both ranks (every real token once per epoch), the slowest rank's time
    assert stats[0].update.train_tokens == ALGO.ppo_epochs * int(exp.sequences.attention_mask.sum())
    expected, losses, norms = workers_plain_ppo_update(workers_tiny_llama, exp, TRAINER, ALGO, seed=5)
    assert stats[0].loss == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    assert stats[0].update.grad_norm == pytest.approx(sum(norms) / len(norms), rel=1e-5)
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5, msg=name)
