"""PolicyWorker in this process (world size 1, gloo, no Ray): the DeepSpeed update equals a plain
torch loop, it learns, its weights stream out exactly as saved, and a checkpoint resumes exactly."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")
pytest.importorskip("deepspeed")

from karma_ray.rlhf.config import AlgoConfig, ModelConfig, TrainerConfig  # noqa: E402
from karma_ray.training.config import DeepSpeedConfig  # noqa: E402
from karma_ray.rlhf.workers.distributed import free_port  # noqa: E402
from karma_ray.rlhf.workers.policy import PolicyWorker  # noqa: E402

# Entropy bonus, KL in the loss, weight decay, a clip that binds and 2 micro-batches per step: every
# term of the update is exercised. lr is large so one update moves the weights visibly.
TRAINER = TrainerConfig(micro_batch_size=2, lr=1e-2, weight_decay=0.1, grad_clip=0.5)
ALGO = AlgoConfig(minibatch_size=4, ppo_epochs=2, entropy_coef=0.01, kl_placement="loss", kl_estimator="k3", kl_coef=0.1)


def policy(model_dir, trainer=TRAINER, algo=ALGO, seed=0) -> PolicyWorker:
    return PolicyWorker(ModelConfig(policy=str(model_dir)), trainer, algo, 0, 1, "127.0.0.1", free_port(), seed=seed)


def weights(worker: PolicyWorker) -> dict[str, torch.Tensor]:
    return {k: v for bucket in worker.weight_buckets(1) for k, v in bucket.items()}


@pytest.mark.parametrize("zero_stage", [2, 0])
def test_train_step_equals_a_plain_torch_update(workers_tiny_llama, workers_experience, workers_plain_ppo_update, zero_stage):
    exp = workers_experience(8, seed=0)
    worker = policy(workers_tiny_llama, dataclasses.replace(TRAINER, deepspeed=DeepSpeedConfig(zero_stage=zero_stage)), seed=3)
    stats = worker.train_step(exp)
    expected, losses, norms = workers_plain_ppo_update(workers_tiny_llama, exp, TRAINER, ALGO, seed=3)
    got = weights(worker)
    assert set(got) == set(expected)
    moved = max(float((expected[k] - load).abs().max()) for k, load in weights_initial(workers_tiny_llama).items())
    assert moved > 1e-3  # the update did something
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5, msg=name)
    assert stats.update.steps == 4  # 2 epochs x 8 / 4
    assert stats.loss == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    assert stats.update.grad_norm == pytest.approx(sum(norms) / len(norms), rel=1e-5)  # the gradient's scale too
    assert stats.update.grad_norm > TRAINER.grad_clip and 0 <= stats.clip_frac <= 1 and stats.update.lr == TRAINER.lr
    # Speed accounting: every real token of the batch trained on once per epoch; TFLOP/s from the
    # model's FLOPs per token (karma_ray.rlhf.perf); no MFU on CPU (no known peak).
    from karma_ray.rlhf.perf import FlopsModel
    from karma_ray.models.hf import load_causal_lm

    real_tokens = int(exp.sequences.attention_mask.sum())
    assert stats.update.train_tokens == ALGO.ppo_epochs * real_tokens
    T = exp.sequences.input_ids.shape[1]
    flops = FlopsModel.of(load_causal_lm(workers_tiny_llama)).train_flops(ALGO.ppo_epochs * real_tokens, T)
    assert stats.update.train_tflops == pytest.approx(flops / stats.update.train_s / 1e12, rel=1e-9)
    assert stats.update.train_s > 0 and stats.update.mfu is None


def weights_initial(model_dir) -> dict[str, torch.Tensor]:
    from karma_ray.models.hf import load_causal_lm

    return {k: v.detach() for k, v in load_causal_lm(model_dir).state_dict().items()}


def test_positive_advantages_raise_those_tokens_logprobs(workers_tiny_llama, workers_experience):
    exp = workers_experience(8, seed=1)
    worker = policy(workers_tiny_llama, TrainerConfig(micro_batch_size=4, lr=3e-3), AlgoConfig(minibatch_size=8, kl_placement="none"))
    mask = exp.sequences.response_mask
    before = worker.logprobs(exp.sequences)
    exp.old_logprobs = before
    exp.advantages = torch.where(torch.arange(mask.shape[1]) % 2 == 0, 1.0, -1.0).expand_as(mask) * mask
    for _ in range(5):
        stats = worker.train_step(exp)
        exp.old_logprobs = worker.logprobs(exp.sequences)  # a fresh rollout policy each iteration
    delta = (exp.old_logprobs - before) * mask
    up, down = exp.advantages > 0, exp.advantages < 0
    assert float(delta[up].mean()) > 0.5 and float(delta[down].mean()) < -0.5
    assert stats.policy_loss < 0  # pi/pi_old moves with the advantage sign


def test_weight_buckets_are_exactly_what_save_hf_writes(workers_tiny_llama, tmp_path):
    from safetensors.torch import load_file

    from karma_ray.models.hf import load_causal_lm

    worker = policy(workers_tiny_llama)
    buckets = list(worker.weight_buckets(0.02))  # ~20 KiB buckets: several of them
    bound = 0.02 * 2**20
    assert len(buckets) > 3
    assert all(sum(t.numel() * t.element_size() for t in b.values()) <= bound or len(b) == 1 for b in buckets)
    streamed = {k: v for b in buckets for k, v in b.items()}
    assert sum(len(b) for b in buckets) == len(streamed)  # no name twice

    out = worker.save_hf(tmp_path / "hf")
    saved = load_file(os.path.join(out, "model.safetensors"))
    assert set(saved) == set(streamed)
    for name, tensor in saved.items():
        assert torch.equal(tensor, streamed[name]), name
    reloaded = load_causal_lm(out)  # transformers reads it back (vLLM reads the same files)
    assert torch.equal(reloaded.lm_head.weight, streamed["lm_head.weight"])
    assert os.path.exists(os.path.join(out, "tokenizer.json"))


@pytest.mark.parametrize("zero_stage", [2, 0])
def test_checkpoint_resume_continues_exactly(workers_tiny_llama, workers_experience, tmp_path, zero_stage):
    batches = [workers_experience(8, seed=s) for s in (10, 11, 12)]
    trainer = dataclasses.replace(TRAINER, deepspeed=DeepSpeedConfig(zero_stage=zero_stage))
    first = policy(workers_tiny_llama, trainer, seed=7)
    for exp in batches[:2]:
        first.train_step(exp)
    first.save_checkpoint(tmp_path / "ckpt")
    torch.rand(5), __import__("random").random()  # disturb the process RNGs: load must restore them
    straight = first.train_step(batches[2])
    straight_weights = weights(first)

    resumed = policy(workers_tiny_llama, trainer, seed=123)  # a different seed: everything must come from the checkpoint
    resumed.load_checkpoint(tmp_path / "ckpt")
    again = resumed.train_step(batches[2])
    pairs = {"loss": (again.loss, straight.loss), "policy_loss": (again.policy_loss, straight.policy_loss),
             "approx_kl": (again.approx_kl, straight.approx_kl), "grad_norm": (again.update.grad_norm, straight.update.grad_norm)}
    for key, (a, b) in pairs.items():
        assert a == pytest.approx(b, abs=1e-6), key
    got = weights(resumed)
    for name, value in straight_weights.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=name)


def test_minibatch_must_divide_the_batch(workers_tiny_llama, workers_experience):
    worker = policy(workers_tiny_llama)
    with pytest.raises(ValueError, match="minibatches of 4"):
        worker.train_step(workers_experience(6))
