"""The trainable policy: a causal LM under DeepSpeed ZeRO (stage 2 or 3), data-parallel over N workers.

A plain class; `karma_ray.rlhf.group.WorkerGroup` makes one Ray actor per rank. Every method is
called on ALL ranks with the same arguments (under ZeRO-3 each forward gathers parameter shards
from every rank, so a forward on one rank alone would hang):

    logprobs(batch)            every rank computes all rows; the driver keeps rank 0's result
    train_step(experience)     every rank gets the whole experience and trains on its rows of each
                               minibatch (see karma_ray.rlhf.workers.distributed)
    weight_buckets(mib)        a generator; only rank 0 yields, the others take part in the gathers
    save_hf / save_checkpoint / load_checkpoint

Dropout is disabled (TRL/OpenRLHF do the same for PPO), so the logprobs of `logprobs()` and of the
first training forward agree and the first PPO ratio is exactly 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import torch

from karma_ray.algo import aggregate_loss, entropy_bonus, entropy_from_logits, kl_loss, ppo_policy_loss
from karma_ray.rlhf.config import AlgoConfig, ModelConfig, TrainerConfig
from karma_ray.engines.weight_sync import iter_buckets
from karma_ray.engines.forward import batch_logprobs, causal_lm_forward, resolve_device, resolve_dtype
from karma_ray.rlhf.workers.distributed import ZeroTrainer, init_distributed, seed_everything
from karma_ray.types import Experience, PolicyStats, SequenceBatch, response_logprobs


class PolicyWorker:
    """One rank of the policy (see the module docstring)."""

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
        from karma_ray.models.hf import load_causal_lm

        self.model_cfg, self.trainer_cfg, self.algo, self.rank = model, trainer, algo, rank
        self.device = resolve_device()
        dtype = resolve_dtype(model.dtype, self.device)
        init_distributed(rank, world_size, master_addr, master_port, self.device)
        seed_everything(seed + rank)
        # fp32 weights in; DeepSpeed casts the module for bf16/fp16 and keeps fp32 master weights.
        module = load_causal_lm(model.policy, dtype="float32", trust_remote_code=model.trust_remote_code)
        if trainer.gradient_checkpointing:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Same shuffle seed on every rank: all ranks must cut the same minibatches.
        self.trainer = ZeroTrainer.build(module, trainer, algo, rank, world_size, self.device, dtype, seed)

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """(B, R) logprobs of the response tokens (0 on padding), float32 on CPU.

        Every rank computes every row in the same micro-batches (required under ZeRO-3, where all
        ranks run each forward together); under ZeRO-2 a driver may call rank 0 alone."""
        self.trainer.module.eval()
        return batch_logprobs(self.trainer.module, batch, self.trainer_cfg.micro_batch_size, self.device)

    def train_step(self, experience: Experience, kl_coef: Optional[float] = None) -> PolicyStats:
        """algo.ppo_epochs passes of minibatches of algo.minibatch_size sequences (one optimizer step
        each) over `experience` (the whole batch, the same on every rank).

        Loss per minibatch: PPO clipped surrogate (clip_eps, clip_eps_high, loss_agg)
        + entropy_coef * entropy bonus + (kl_placement == "loss") kl_coef * KL(policy || reference).
        `kl_coef` overrides algo.kl_coef (the driver's adaptive controller).

        Returns PolicyStats: the step averages of policy_loss, clip_frac, approx_kl (rollout policy vs
        current), entropy, kl_loss (only with kl_placement="loss") and loss (the total), and the update.
        """
        algo = self.algo
        coef = algo.kl_coef if kl_coef is None else float(kl_coef)
        kl_in_loss = algo.kl_placement == "loss"

        def micro_loss(micro: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            seq = micro.sequences
            mask = seq.response_mask
            logits = causal_lm_forward(self.trainer.module, seq)
            logp = response_logprobs(logits, seq)
            loss, stats = ppo_policy_loss(
                logp, micro.old_logprobs, micro.advantages, mask,
                clip_eps_low=algo.clip_eps, clip_eps_high=algo.clip_eps_high, loss_agg=algo.loss_agg,
            )
            metrics = {"policy_loss": loss.detach(), "clip_frac": stats.clip_frac, "approx_kl": stats.approx_kl}
            response_logits = logits[:, seq.prompt_len - 1 : -1]  # the logits that predict the response
            with torch.set_grad_enabled(algo.entropy_coef > 0):  # no graph for a metric-only entropy
                entropy = entropy_from_logits(response_logits.float())
            if algo.entropy_coef > 0:
                loss = loss + entropy_bonus(entropy, mask, algo.entropy_coef, algo.loss_agg)
            metrics["entropy"] = aggregate_loss(entropy.detach(), mask, algo.loss_agg)
            if kl_in_loss:
                kl = kl_loss(logp, micro.ref_logprobs, mask, algo.kl_estimator, algo.loss_agg)
                loss = loss + coef * kl
                metrics["kl_loss"] = kl.detach()
            metrics["loss"] = loss.detach()
            return loss, metrics

        terms, update = self.trainer.train(experience, algo.ppo_epochs, micro_loss)
        return PolicyStats(**terms, update=update)  # the metrics are named as PolicyStats's fields

    def weight_buckets(self, bucket_mib: int) -> Iterator[dict[str, torch.Tensor]]:
        """Full (unsharded) CPU parameter tensors under their HF names, in buckets of about
        `bucket_mib` MiB: exactly the tensors `save_hf` writes. Call it on every rank (ZeRO-3 gathers
        collectively); only rank 0 yields. With Ray: `.options(num_returns="streaming")`."""
        named = self.trainer.full_state()
        if self.rank == 0:
            yield from iter_buckets(named, int(bucket_mib * 2**20))
        else:
            for _ in named:  # take part in every gather, yield nothing
                pass

    def save_hf(self, path: str | os.PathLike) -> Optional[str]:
        """Rank 0 writes an HF folder (safetensors + config + tokenizer) that transformers and vLLM
        load; all ranks must call it (ZeRO-3 gathers). Returns the folder on rank 0, else None."""
        state = dict(self.trainer.full_state())
        if self.rank != 0:
            return None
        from karma_ray.models.hf import load_tokenizer

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.trainer.module.save_pretrained(out, state_dict=state, safe_serialization=True)
        tok_source = self.model_cfg.tokenizer or self.model_cfg.policy
        load_tokenizer(tok_source, trust_remote_code=self.model_cfg.trust_remote_code).save_pretrained(out)
        return str(out)

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """DeepSpeed checkpoint (weights, optimizer, scheduler; ZeRO shards per rank) + RNG states.
        All ranks call it with the same path; resuming needs the same number of workers."""
        self.trainer.save(path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        self.trainer.load(path)
