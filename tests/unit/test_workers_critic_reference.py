"""CriticWorker and ReferenceWorker in this process (world size 1, gloo, no Ray)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")
pytest.importorskip("deepspeed")

from karma_ray.rlhf.config import AlgoConfig, ModelConfig, TrainerConfig  # noqa: E402
from karma_ray.rlhf.workers.critic import HEAD_FILE, CriticWorker  # noqa: E402
from karma_ray.rlhf.workers.distributed import free_port  # noqa: E402
from karma_ray.engines.scorer import LogprobScorer  # noqa: E402
from karma_ray.types import pack_sequences  # noqa: E402


def critic(model: ModelConfig, lr: float = 1e-2) -> CriticWorker:
    return CriticWorker(model, TrainerConfig(micro_batch_size=3, lr=lr), AlgoConfig(minibatch_size=4), 0, 1, "127.0.0.1", free_port())


def test_value_of_token_j_is_read_before_token_j(workers_tiny_llama):
    """V_j depends on the prompt and response tokens < j only: changing token j (or later) leaves
    V_0..V_j unchanged, changing token j - 1 changes V_j."""
    worker = critic(ModelConfig(policy=str(workers_tiny_llama)))
    prompt, response = [5, 6, 7], [8, 9, 10, 11]
    batch = pack_sequences([prompt, [5, 6, 7], [1, 5, 6, 7]], [response, [8, 9, 42, 11], [8, 9, 10, 11]], pad_id=0)
    values = worker.values(batch)  # (3, 4)
    assert values.shape == (3, 4)
    torch.testing.assert_close(values[1, :3], values[0, :3], atol=1e-6, rtol=0)  # token 2 changed: V_0..V_2 same
    assert abs(float(values[1, 3] - values[0, 3])) > 1e-6  # ...and V_3, read after token 2, differs
    assert abs(float(values[2, 0] - values[0, 0])) > 1e-6  # a longer prompt changes V_0 (it is read at P - 1)
    # V_0 of the left-padded row equals the same sequence alone (positions ignore padding):
    alone = worker.values(pack_sequences([prompt], [response], pad_id=0))
    torch.testing.assert_close(alone[0], values[0], atol=1e-5, rtol=1e-5)


def test_value_loss_falls_and_the_critic_round_trips_through_save_hf(workers_tiny_llama, workers_experience, tmp_path):
    worker = critic(ModelConfig(policy=str(workers_tiny_llama)))
    exp = workers_experience(8, seed=2)
    exp.returns = (2.0 + exp.returns) * exp.sequences.response_mask  # a target far from the initial ~0 values
    losses = []
    for _ in range(15):
        exp.values = worker.values(exp.sequences)
        losses.append(worker.train_step(exp).value_loss)
    assert losses[-1] < 0.3 * losses[0], losses
    out = worker.save_hf(tmp_path / "critic")
    assert os.path.exists(os.path.join(out, HEAD_FILE))
    restarted = critic(ModelConfig(policy=str(workers_tiny_llama), critic=out))
    torch.testing.assert_close(restarted.values(exp.sequences), worker.values(exp.sequences), atol=1e-5, rtol=1e-5)


def test_critic_needs_returns(workers_tiny_llama, workers_experience):
    exp = workers_experience(4)
    exp.returns = None
    with pytest.raises(ValueError, match="returns"):
        critic(ModelConfig(policy=str(workers_tiny_llama))).train_step(exp)


def test_reference_logprobs_equal_a_plain_forward_of_each_unpadded_sequence(workers_tiny_llama, workers_experience):
    from karma_ray.models.hf import load_causal_lm

    batch = workers_experience(6, seed=4).sequences
    got = LogprobScorer(str(workers_tiny_llama), micro_batch_size=4).logprobs(batch)  # 2 micro-batches
    model = load_causal_lm(workers_tiny_llama).eval()
    P = batch.prompt_len
    for i in range(len(batch)):
        real = batch.attention_mask[i].bool()
        ids = batch.input_ids[i][real]  # prompt + response, no padding
        n_resp = int(batch.response_mask[i].sum())
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0], dim=-1)
        start = len(ids) - n_resp
        expected = torch.stack([logp[start + j - 1, ids[start + j]] for j in range(n_resp)]) if n_resp else torch.zeros(0)
        torch.testing.assert_close(got[i, :n_resp], expected, atol=1e-5, rtol=1e-5)
        assert torch.all(got[i, n_resp:] == 0)
    assert got.shape == (len(batch), batch.input_ids.shape[1] - P)
