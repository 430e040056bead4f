"""Batch packing and response logprobs: hand-built cases."""

import pytest
import torch

from karma_ray.types import Experience, pack_sequences, response_logprobs


def test_pack_left_pads_prompts_and_right_pads_responses():
    b = pack_sequences([[5, 6], [7]], [[1, 2, 3], [4]], pad_id=0)
    assert b.prompt_len == 2
    assert b.input_ids.tolist() == [[5, 6, 1, 2, 3], [0, 7, 4, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert b.response_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    # positions count real tokens only: the left-padded row starts at 0 on its first real token
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]
    assert b.response_ids.tolist() == [[1, 2, 3], [4, 0, 0]]


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="prompts but"):
        pack_sequences([[1]], [[1], [2]], 0)
    with pytest.raises(ValueError, match="no tokens"):
        pack_sequences([[]], [[1]], 0)
    with pytest.raises(ValueError, match="empty"):
        pack_sequences([], [], 0)


def test_response_logprobs_reads_the_logit_before_each_token():
    b = pack_sequences([[1, 2]], [[3, 0]], pad_id=0)  # response = tokens 3 then 0 (R=2)
    b.response_mask[0, 1] = 0.0  # treat the second as padding
    V = 4
    logits = torch.zeros(1, 4, V)
    logits[0, 1] = torch.tensor([0.0, 0.0, 0.0, 2.0])  # position 1 (last prompt token) predicts token 3
    lp = response_logprobs(logits, b)
    expected = 2.0 - torch.logsumexp(torch.tensor([0.0, 0.0, 0.0, 2.0]), 0)
    assert lp.shape == (1, 2)
    assert lp[0, 0].item() == pytest.approx(expected.item(), abs=1e-6)
    assert lp[0, 1].item() == 0.0  # masked


def test_experience_shard_and_minibatches_cover_every_row_once():
    b = pack_sequences([[1]] * 6, [[2, 3]] * 6, 0)
    t = torch.arange(6, dtype=torch.float32)[:, None].expand(6, 2).clone()
    exp = Experience(b, old_logprobs=t, ref_logprobs=t, advantages=t, scores=torch.arange(6.0))
    shards = [exp.shard(r, 2) for r in range(2)]
    assert [s.scores.tolist() for s in shards] == [[0, 2, 4], [1, 3, 5]]
    seen = sorted(x for mb in exp.minibatches(4, torch.Generator().manual_seed(0)) for x in mb.scores.tolist())
    assert seen == [0, 1, 2, 3, 4, 5]
    assert [len(mb) for mb in exp.minibatches(4)] == [4, 2]
