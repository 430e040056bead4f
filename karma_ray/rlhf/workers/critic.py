"""The critic: a value model (transformer backbone + scalar head) under DeepSpeed ZeRO, like the policy.

Only created for estimators that use a critic (GAE). Every method is called on all ranks with the
same arguments (ZeRO-3 runs each forward on all ranks together); `values` returns all rows on
every rank and the driver keeps rank 0's.

Alignment: the value of response token j is read at the hidden state of column P + j - 1, the state
from which token j is sampled (the same column whose logits give its logprob in
`karma_ray.types.response_logprobs`), so V_j estimates the return from emitting token j onward.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from karma_ray.algo import aggregate_loss, value_loss
from karma_ray.rlhf.config import AlgoConfig, ModelConfig, TrainerConfig
from karma_ray.engines.forward import resolve_device, resolve_dtype, row_chunks, select_rows, sequences_to
from karma_ray.rlhf.workers.distributed import ZeroTrainer, init_distributed, seed_everything
from karma_ray.types import CriticStats, Experience, SequenceBatch

HEAD_FILE = "value_head.safetensors"  # beside the backbone's HF files in a critic folder
HEAD_PREFIX = "value_head."
BACKBONE_PREFIX = "backbone."


class ValueModel(torch.nn.Module):
    """backbone (AutoModel: hidden states, no LM head) + a linear scalar head."""

    def __init__(self, backbone: torch.nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = torch.nn.Linear(hidden_size, 1)
        # Small init (the reward-model heads of TRL/OpenRLHF use std 1/(hidden+1)): initial values near
        # 0, so the first GAE advantages are dominated by the rewards rather than by head noise.
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size + 1))
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
        ).last_hidden_state  # (B, T, H)
        return self.value_head(hidden).squeeze(-1)  # (B, T)


def response_values(per_position: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """(B, P + R) values at every column -> (B, R): token j's value from column P + j - 1, 0 on padding."""
    P = batch.prompt_len
    return per_position[:, P - 1 : -1].float() * batch.response_mask


def load_value_model(model: ModelConfig) -> ValueModel:
    """The backbone of model.critic (or of the policy) + a head: the saved head when the folder has one
    (a critic written by `CriticWorker.save_hf`), else a fresh small one."""
    from safetensors.torch import load_file

    from karma_ray.models.hf import load_backbone

    source = model.critic or model.policy
    backbone = load_backbone(source, dtype="float32", trust_remote_code=model.trust_remote_code)
    value_model = ValueModel(backbone, backbone.config.hidden_size)
    head_path = Path(source) / HEAD_FILE
    if head_path.exists():
        head = load_file(str(head_path))
        value_model.value_head.load_state_dict({k[len(HEAD_PREFIX):]: v for k, v in head.items()})
    return value_model


class CriticWorker:
    """One rank of the critic (see the module docstring)."""

    def __init__(
        self,
        model: ModelConfig,
        trainer: TrainerConfig,
        algo: AlgoConfig,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        seed: int = 0,
    ) -> None:
        self.trainer_cfg, self.algo, self.rank = trainer, algo, rank
        self.device = resolve_device()
        dtype = resolve_dtype(model.dtype, self.device)
        init_distributed(rank, world_size, master_addr, master_port, self.device)
        torch.manual_seed(seed)  # the same fresh head on every rank
        module = load_value_model(model)
        seed_everything(seed + rank)
        if trainer.gradient_checkpointing:
            module.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # shuffle seed: the same on all ranks; not the policy's order
        self.trainer = ZeroTrainer.build(module, trainer, algo, rank, world_size, self.device, dtype, seed + 1)

    @torch.no_grad()
    def values(self, batch: SequenceBatch) -> torch.Tensor:
        """(B, R) values of the response tokens (0 on padding), float32 on CPU; all ranks, all rows."""
        module = self.trainer.module
        module.eval()
        chunks = row_chunks(len(batch), self.trainer_cfg.micro_batch_size)
        micros = (sequences_to(select_rows(batch, index), self.device) for index in chunks)
        return torch.cat([response_values(module(micro), micro).cpu() for micro in micros])

    def train_step(self, experience: Experience) -> CriticStats:
        """algo.ppo_epochs passes of minibatches with the clipped value loss (algo.value_clip) of the
        current values against experience.returns, clipped around experience.values.

        Returns CriticStats: step averages of value_loss, value_clip_frac, values (mean prediction), and the update.
        """
        if experience.returns is None or experience.values is None:
            raise ValueError("the critic needs experience.returns and experience.values (a GAE batch)")
        algo = self.algo

        def micro_loss(micro: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            seq = micro.sequences
            values = response_values(self.trainer.module(seq), seq)
            loss, clip_frac = value_loss(
                values, micro.values, micro.returns, seq.response_mask, clip_range=algo.value_clip, loss_agg=algo.loss_agg
            )
            mean_value = aggregate_loss(values.detach(), seq.response_mask, algo.loss_agg)
            return loss, {"value_loss": loss.detach(), "value_clip_frac": clip_frac, "values": mean_value}

        terms, update = self.trainer.train(experience, algo.ppo_epochs, micro_loss)
        return CriticStats(**terms, update=update)  # the metrics are named as CriticStats's fields

    def save_hf(self, path: str | os.PathLike) -> Optional[str]:
        """Rank 0 writes the backbone as an HF folder (loadable with load_backbone) plus
        value_head.safetensors; `ModelConfig(critic=path)` starts a critic from it. All ranks call it."""
        from safetensors.torch import save_file

        state = dict(self.trainer.full_state())
        if self.rank != 0:
            return None
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        head = {k: v.contiguous() for k, v in state.items() if k.startswith(HEAD_PREFIX)}
        self.trainer.module.backbone.save_pretrained(out, state_dict=backbone, safe_serialization=True)
        save_file(head, str(out / HEAD_FILE))
        return str(out)

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        self.trainer.save(path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        self.trainer.load(path)
