"""Model FLOPs and MFU (karma_ray.rlhf.perf) against hand-computed values."""

import math

import pytest
import torch

from karma_ray.rlhf.perf import (
    FlopsModel,
    matmul_param_count,
    model_flops_utilization,
    peak_flops,
    train_flops_per_token,
)


def test_flops_per_token_is_6n_plus_attention():
    # N = 1000 matmul params, L = 2 layers, d = 8, T = 10: 6 * 1000 + 12 * 2 * 8 * 10 = 6000 + 1920
    assert train_flops_per_token(1000, 2, 8, 10) == 7920.0
    assert FlopsModel(1000, 2, 8).train_flops(tokens=3, seq_len=10) == 3 * 7920.0
    with pytest.raises(ValueError):
        train_flops_per_token(-1, 2, 8, 10)


def _tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg)


def test_matmul_params_leave_out_the_input_embedding_unless_tied():
    untied, tied = _tiny_llama(False), _tiny_llama(True)
    # per layer: q,k,v,o 4 * 16*16 + gate,up,down 3 * 16*32 + 2 norms of 16 = 1024 + 1536 + 32 = 2592
    # + final norm 16 + LM head 100*16 (+ the input embedding 100*16, a lookup: not counted)
    expected = 2 * 2592 + 16 + 100 * 16
    assert matmul_param_count(untied) == expected
    assert sum(p.numel() for p in untied.parameters()) == expected + 100 * 16
    # tied: the one matrix is the LM head's product, counted once
    assert matmul_param_count(tied) == expected
    assert FlopsModel.of(untied) == FlopsModel(expected, 2, 16)


def test_flops_model_reads_a_backbone_behind_a_value_head():
    from transformers import LlamaConfig, LlamaModel

    from karma_ray.rlhf.workers.critic import ValueModel

    backbone = LlamaModel(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2))
    model = ValueModel(backbone, 16)
    # layers + final norm + value head (16 weights + 1 bias); no LM head, embedding not counted
    assert FlopsModel.of(model) == FlopsModel(2 * 2592 + 16 + 17, 2, 16)


def test_peak_flops_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe", torch.float16) == pytest.approx(756e12)
    assert peak_flops("NVIDIA H200", torch.bfloat16) == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.float32) is None  # fp32: no 16-bit tensor-core peak
    assert peak_flops("Some Unknown Accelerator", torch.bfloat16) is None
    # 4.947e14 FLOPs in 1 s on a 989.4 TFLOP/s device: 50%
    assert model_flops_utilization(4.947e14, 1.0, 989.4e12) == pytest.approx(0.5)
    assert model_flops_utilization(1.0, 1.0, None) is None
    assert model_flops_utilization(1.0, 0.0, 1e12) is None
    assert not math.isnan(model_flops_utilization(2e12, 2.0, 1e12))
