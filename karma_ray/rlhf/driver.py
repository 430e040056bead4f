"""The PPO driver: one process that coordinates the role actors, iteration by iteration.

Each iteration is the paper's pseudocode, a flat sequence of numbered, timed phases:

    1 prompts     next batch of contexts (seeded order, part of the checkpoint)
    2 generate    rollout engines sample responses                         (vLLM or HF)
    3 score       reward actors score (context, response)       \
    4 reference   reference logprobs of the sampled tokens        > fanned out together, one wait
    5 values      policy logprobs (+ critic values)              /
    6 advantages  reward shaping, KL, advantages                               (karma_ray.algo)
    7 update      policy (and critic) train_step on the Experience            (DeepSpeed)
    8 sync        policy weights -> rollout engines, bucketed, with a timeout
    9 log         metrics.jsonl / TensorBoard / progress bar; checkpoint every N iterations

Every mode (estimator, KL placement, critic or not, engine, placement) is resolved in `setup`; the
loop below never branches on configuration. Large tensors travel between actors as ObjectRefs
(`ray.put` once, every consumer gets the ref), never through the driver twice.

A rollout or reward actor that dies is replaced (same options), resynced, and the phase retried, up
to `run.max_actor_restarts` times; trainer actors (policy/critic) are not replaceable mid-iteration
(their optimizer state lives in them): that is what checkpoints and `--resume` are for.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from karma_ray.algo.kl import AdaptiveKLController, FixedKLController
from karma_ray.algo.logprobs import masked_mean
from karma_ray.algo.rewards import RunningMoments, clip_scores, eos_penalty, length_penalty, normalize_scores
from karma_ray.config import save_resolved
from karma_ray.data.format import decode_replies
from karma_ray.data.synth import corpus_is_synthetic, gold_text_quality
from karma_ray.rlhf.config import PPOConfig
from karma_ray.rlhf.experience import make_advantage_fn
from karma_ray.rlhf.workers.reward import combine_scores
from karma_ray.rlhf.prompts import Prompt, PromptSampler, load_prompts, tokenize_prompts
from karma_ray.types import Experience, Generations, SamplingSettings, pack_sequences

CHECKPOINTS = "checkpoints"
DRIVER_STATE = "driver_state.json"
COMPLETE = "COMPLETE"


def gold_metrics(prompts: list[Prompt], replies: list[str]) -> dict[str, float]:
    """Mean and standard error of the planted gold text quality of a batch's replies (synthetic
    corpora); gold_n counts the replies it is defined for (a context must show a titled topic)."""
    golds = [g for p, r in zip(prompts, replies) if (g := gold_text_quality(p.context, r)) is not None]
    if not golds:
        return {"gold_mean": NAN, "gold_sem": NAN, "gold_n": 0}
    mean = sum(golds) / len(golds)
    sem = (sum((g - mean) ** 2 for g in golds) / (len(golds) - 1) / len(golds)) ** 0.5 if len(golds) > 1 else NAN
    return {"gold_mean": mean, "gold_sem": sem, "gold_n": len(golds)}


class PhaseTimer:
    """`with timer("2_generate"): ...` records wall seconds per phase of one iteration."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class DriverState:
    """What a checkpoint holds besides the actors' own state."""

    step: int = 0  # last COMPLETED iteration
    kl_controller: dict = field(default_factory=dict)
    reward_moments: dict = field(default_factory=dict)
    prompt_sampler: dict = field(default_factory=dict)
    python_rng: Any = None
    torch_rng: list = field(default_factory=list)
    actor_restarts: int = 0

    @classmethod
    def from_json(cls, d: dict) -> "DriverState":
        rng = d.get("python_rng")  # its tuples were written as JSON lists
        return cls(**{**d, "python_rng": (rng[0], tuple(rng[1]), rng[2]) if rng else None})


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoints that finished writing (have the COMPLETE marker), oldest first."""
    return sorted(p for p in (output_dir / CHECKPOINTS).glob("step_*") if (p / COMPLETE).exists())


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint (None: none yet)."""
    return max(complete_checkpoints(output_dir), default=None)


def sampling_seed(run_seed: int, step: int) -> int:
    """Per-iteration sampling seed: a resumed run samples exactly as the uninterrupted one would."""
    return (run_seed * 1_000_003 + step * 7919) % (2**31 - 1)


class PPODriver:
    def __init__(self, cfg: PPOConfig, output_dir: str | os.PathLike, resume: bool = False, backend: str = "ray") -> None:
        """backend 'ray': every role an actor (the real thing); 'local': the same worker classes in
        this process (karma_ray.rlhf.local), for measuring orchestration overhead and debugging."""
        if backend not in ("ray", "local"):
            raise ValueError(f"backend must be 'ray' or 'local', not {backend!r}")
        self.backend = backend
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.state = DriverState()
        self.history: list[dict] = []
        self._setup()

    # -------------------------------------------------------------- setup: every mode resolved here
    def _setup(self) -> None:
        from karma_ray.models.hf import load_tokenizer
        from karma_ray.ray_utils import init_ray
        from karma_ray.rlhf.roles import launch_roles
        from karma_ray.rlhf.logging import MetricsLogger

        cfg = self.cfg
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, self.output_dir)
        random.seed(cfg.run.seed)
        torch.manual_seed(cfg.run.seed)

        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.policy, cfg.model.trust_remote_code)
        self.prompts: list[Prompt] = load_prompts(cfg.prompts)
        self.prompt_ids = tokenize_prompts(self.tokenizer, [p.text for p in self.prompts], cfg.prompts.max_prompt_tokens)
        self.sampler = PromptSampler(len(self.prompts), cfg.run.prompts_per_iteration, cfg.run.seed)
        self.kl_ctl = (
            FixedKLController(cfg.algo.kl_coef)
            if cfg.algo.kl_controller == "fixed"
            else AdaptiveKLController(cfg.algo.kl_coef, cfg.algo.kl_target, cfg.algo.kl_horizon)
        )
        self.reward_moments = RunningMoments()
        self.compute_advantages = make_advantage_fn(cfg.algo)
        self.reward_weights = [spec.weight for spec in cfg.reward.models]
        self.reward_names = [spec.name or Path(spec.path).name or spec.path for spec in cfg.reward.models]
        # On a synthetic corpus the planted text quality of a reply is known: watching it beside the
        # proxy reward tells a real gain from reward hacking.
        self.gold = cfg.run.gold == "on" or (
            cfg.run.gold == "auto" and cfg.prompts.source == "prepared" and corpus_is_synthetic(cfg.prompts.path))
        self.live_eval = None
        if cfg.eval.every_iterations:  # its data is read and checked here, before Ray starts
            from karma_ray.eval.live import LiveEvaluator

            self.live_eval = LiveEvaluator(cfg.eval, self.tokenizer)

        if self.backend == "ray":
            init_ray(cfg.ray)
            self.roles = launch_roles(cfg, self.output_dir)  # placement groups + all actors, ready
        else:
            from karma_ray.rlhf.local import launch_local_roles

            self.roles = launch_local_roles(cfg)
        self.roles.rollout.on_replace = self._resync_engine
        self.logger = MetricsLogger(self.output_dir, cfg.run)

        if self.resume:
            self._load_checkpoint()

    # -------------------------------------------------------------------------------- the loop
    def fit(self, on_iteration_end: Optional[Callable[["PPODriver", dict], None]] = None) -> list[dict]:
        for step in range(self.state.step + 1, self.cfg.run.iterations + 1):
            metrics = self.iteration(step)
            self.history.append(metrics)
            if on_iteration_end is not None:
                on_iteration_end(self, metrics)
        self.logger.close()
        return self.history

    def iteration(self, step: int) -> dict:
        cfg, roles, t = self.cfg, self.roles, PhaseTimer()
        start = time.perf_counter()

        with t("1_prompts"):
            idx = self.sampler.next_indices()
            prompts = [self.prompts[i] for i in idx]
            prompt_ids = [self.prompt_ids[i] for i in idx]

        with t("2_generate"):
            sampling = SamplingSettings(
                max_new_tokens=cfg.rollout.max_new_tokens,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                top_k=cfg.rollout.top_k,
                n=cfg.run.samples_per_prompt,
                seed=sampling_seed(cfg.run.seed, step),
            )
            gens = roles.generate(prompt_ids, sampling)
            seqs = pack_sequences(gens.prompt_ids, gens.response_ids, self.tokenizer.pad_token_id)
            mask = seqs.response_mask
            seqs_ref = roles.put(seqs)
            rows = [prompts[g] for g in gens.group]
            responses = decode_replies(self.tokenizer, gens.response_ids)  # as the corpus stores replies

        with t("3-5_score_reference_values"):  # fan out, then one wait
            score_refs = roles.score_refs([p.context for p in rows], responses, [p.metadata for p in rows])
            ref_ref = roles.reference_logprobs(seqs_ref)
            policy_refs = roles.policy_logprobs(seqs_ref)
            value_refs = roles.critic_values(seqs_ref)
            latency = roles.wait_all(score_refs, ref_ref, policy_refs, value_refs)
            per_model_scores = roles.collect_scores(score_refs)
            ref_logprobs = roles.get(ref_ref)
            old_logprobs = roles.get(policy_refs[0])
            values = roles.get(value_refs[0]) if value_refs else None

        with t("6_advantages"):
            raw = combine_scores(per_model_scores, self.reward_weights)
            scores = self._shape_scores(raw, gens, mask)
            kl_coef = self.kl_ctl.value
            adv = self.compute_advantages(
                scores, old_logprobs, ref_logprobs, mask, values, torch.as_tensor(gens.group), kl_coef
            )
            exp = Experience(
                sequences=seqs,
                old_logprobs=old_logprobs,
                ref_logprobs=ref_logprobs,
                advantages=adv.advantages,
                returns=adv.returns,
                values=values,
                scores=scores,
            )
            exp_ref = roles.put(exp)

        with t("7_update"):
            policy_stats, critic_stats = roles.train_step(exp_ref, kl_coef)

        with t("8_sync"):
            sync = roles.sync_weights()

        scores_eval: dict[str, float] = {}
        if self.live_eval is not None and step % cfg.eval.every_iterations == 0:
            with t("8b_eval"):  # the updated policy, through its workers (every rank: ZeRO-3 needs all)
                scores_eval = self.live_eval.evaluate(lambda batch: [roles.get(r) for r in roles.policy_logprobs(roles.put(batch))][0])

        with t("9_log"):
            seq_kl = float(adv.kl_per_sequence.mean())
            self.kl_ctl.update(seq_kl, len(gens))
            sampled = _ragged_to_padded(gens.sampling_logprobs, mask.shape)
            n_tokens = int(mask.sum())
            reward_std = float(raw.std()) if len(raw) > 1 else 0.0
            metrics = {
                "step": step,
                "reward_mean": float(raw.mean()),
                "reward_std": reward_std,
                "reward_sem": reward_std / len(raw) ** 0.5,  # the batch mean's noise
                **(gold_metrics(rows, responses) if self.gold else {}),
                "score_mean": float(scores.mean()),
                **{f"reward/{n}": float(s.mean()) for n, s in zip(self.reward_names, per_model_scores)},
                "kl": seq_kl,
                "kl_coef": kl_coef,
                "entropy": policy_stats.entropy,
                "clip_frac": policy_stats.clip_frac,
                "policy_loss": policy_stats.policy_loss,
                "approx_kl": policy_stats.approx_kl,
                "grad_norm": policy_stats.update.grad_norm,
                "value_loss": critic_stats.value_loss if critic_stats else NAN,
                "response_length": float(mask.sum(-1).mean()),
                "finished_frac": sum(gens.finished) / len(gens),
                "advantage_mean": float(masked_mean(adv.advantages, mask)),
                # Sampling logprobs of the engine vs the policy's recomputation on the same weights
                # (synced at the end of the previous iteration): the check that the sync worked.
                "rollout_logprob_max_abs_diff": float(((sampled - old_logprobs).abs() * mask).max()),
                "sequences": len(gens),
                "generated_tokens": n_tokens,
                "actor_restarts": roles.restarts.used,
                "prompt_epoch": self.sampler.epoch,
                "sync_seconds": sync.total_s,
                "sync_buckets": sync.num_buckets,
                "sync_mib": sync.bytes / 2**20,
                # until the policy had streamed every bucket / the slowest engine's load of them
                "sync_gather_seconds": sync.gather_s,
                "sync_apply_seconds": sync.apply_s,
                # Speed of the update (karma_ray.rlhf.perf): model TFLOP/s per worker, and MFU where
                # the device's peak is known (NaN on CPU).
                "perf/policy_tflops": _or_nan(policy_stats.update.train_tflops),
                "perf/policy_mfu": _or_nan(policy_stats.update.mfu),
                "perf/critic_tflops": _or_nan(critic_stats.update.train_tflops if critic_stats else None),
                "perf/critic_mfu": _or_nan(critic_stats.update.mfu if critic_stats else None),
                **{f"latency/{k}": v for k, v in latency.items()},
                **scores_eval,
            }
            self.state.step = step
        if self._checkpoint_due(step):
            with t("9_checkpoint"):
                self.save_checkpoint(step)
        total = time.perf_counter() - start
        metrics.update({f"time/{k}": v for k, v in t.seconds.items()})
        metrics["time/iteration"] = total
        metrics["tokens_per_s"] = n_tokens / total
        metrics["generate_tokens_per_s"] = n_tokens / max(t.seconds["2_generate"], 1e-9)
        self.logger.log(metrics)
        return metrics

    # ------------------------------------------------------------------------------- pieces
    def _shape_scores(self, raw: torch.Tensor, gens: Generations, mask: torch.Tensor) -> torch.Tensor:
        r = self.cfg.reward
        scores = raw
        if r.normalize:
            self.reward_moments.update(raw)
            scores = normalize_scores(scores, self.reward_moments.mean, self.reward_moments.std)
        scores = clip_scores(scores, r.clip)
        if r.eos_penalty:
            scores = scores + eos_penalty(torch.as_tensor(gens.finished), abs(r.eos_penalty))
        if r.length_target is not None and r.length_coef:
            scores = scores + length_penalty(mask.sum(-1), r.length_target, r.length_coef)
        return scores

    def _checkpoint_due(self, step: int) -> bool:
        every = self.cfg.run.checkpoint_every
        if step == self.cfg.run.iterations:
            return self.cfg.run.final_checkpoint
        return every > 0 and step % every == 0

    def _resync_engine(self, i: int, actor: Any) -> None:
        self.roles.sync_weights(engines=[actor])

    # ---------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int) -> Path:
        path = self.output_dir / CHECKPOINTS / f"step_{step:06d}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        self.roles.save_checkpoint(path)
        self.state.kl_controller = self.kl_ctl.state_dict()
        self.state.reward_moments = self.reward_moments.state_dict()
        self.state.prompt_sampler = self.sampler.state_dict()
        self.state.python_rng = random.getstate()
        self.state.torch_rng = torch.get_rng_state().tolist()
        self.state.actor_restarts = self.roles.restarts.used
        (path / DRIVER_STATE).write_text(json.dumps(asdict(self.state)))
        (path / COMPLETE).write_text(str(step))
        for old in complete_checkpoints(self.output_dir)[: -self.cfg.run.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _load_checkpoint(self) -> None:
        path = latest_checkpoint(self.output_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.output_dir / CHECKPOINTS}")
        self.state = DriverState.from_json(json.loads((path / DRIVER_STATE).read_text()))
        self.kl_ctl.load_state_dict(self.state.kl_controller)
        self.reward_moments.load_state_dict(self.state.reward_moments)
        self.sampler.load_state_dict(self.state.prompt_sampler)
        if self.state.python_rng is not None:
            random.setstate(self.state.python_rng)
        if self.state.torch_rng:
            torch.set_rng_state(torch.tensor(self.state.torch_rng, dtype=torch.uint8))
        self.roles.restarts.used = self.state.actor_restarts
        self.roles.load_checkpoint(path)
        self.roles.sync_weights()  # engines start from the initial weights: bring them to the checkpoint's
        self.logger.truncate_after(self.state.step)
        print(f"[karma ppo] resumed from {path} at step {self.state.step}", flush=True)

    def export_policy(self) -> Path:
        """The trained policy as an HF folder, with its lineage: the initial policy's chain plus this
        run's prompts (a prepared corpus counts as exposure to that corpus; a prompt file does not)."""
        from karma_ray.config import to_dict
        from karma_ray.lineage import data_stage, extend_lineage, file_sha256, json_digest, write_lineage

        path = self.output_dir / "policy"
        self.roles.save_policy_hf(path)
        p = self.cfg.prompts
        if p.source == "prepared":
            ids = [x.source_id for x in self.prompts if x.source_id is not None]
            stage = data_stage("ppo", self.cfg.model.policy, p.path, [p.split], ids, to_dict(self.cfg), iterations=self.state.step)
        else:
            stage = {
                "stage": "ppo",
                "base_model": self.cfg.model.policy,
                "data": str(Path(p.path).resolve()),
                "prompt_file_sha256": file_sha256(p.path),
                "num_examples": len(self.prompts),
                "config_sha256": json_digest(to_dict(self.cfg)),
                "iterations": self.state.step,
            }
        write_lineage(extend_lineage(self.cfg.model.policy, stage, path), path)
        return path

    def shutdown(self) -> None:
        self.roles.shutdown()


NAN = float("nan")  # metrics.jsonl keeps every column; NaN where a role or a FLOP model is absent


def _or_nan(x: Optional[float]) -> float:
    return NAN if x is None else x


def _ragged_to_padded(rows: list[list[float]], shape: torch.Size) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.float32)
    return out
