"""The reward model: a Hugging Face sequence classifier with one label, plus a metadata MLP, summed.

    text / response:  score = classifier(text)
    meta:             score = mlp([metadata features, subreddit embedding])
    text_meta:        score = classifier(text) + mlp(...)

Why a standard `AutoModelForSequenceClassification(num_labels=1)` for the text part: it exists for
encoders and decoders alike (BERT/MiniLM pool the [CLS] token through their pooler; Llama/Qwen/GPT-2
read the last non-pad token), and the exported folder is an ordinary transformers checkpoint, so plain
`AutoModelForSequenceClassification.from_pretrained(dir)` gives the same text score (tests check it on
MiniLM). Why text_meta SUMS the two parts instead of concatenating the pooled embedding with the
features: the text part stays that standard checkpoint, and the planted synthetic signal (and the
paper's decomposition of karma into text and context effects) is additive in the latent; the cost is
that text x metadata interactions cannot be learned.

On disk (folder): the classifier's config.json + model.safetensors + tokenizer files (text variants),
meta_head.safetensors (meta variants), and karma_rm.json (always; the only file of random/constant).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from karma_ray.reward.config import CONTROL_VARIANTS, META_VARIANTS, TEXT_VARIANTS
from karma_ray.reward.inputs import FeatureSpec, RewardInputs, TargetSpec

METADATA_FILE = "karma_rm.json"
META_HEAD_FILE = "meta_head.safetensors"
FORMAT_VERSION = 1
TEXT_FORMAT = "policy_prompt(context) + policy_reply(reply) (karma_ray.reward.inputs.rm_text); response: '[user] ' + reply"


@dataclass(frozen=True)
class RewardModelMeta:
    """Everything besides the weights that scoring needs (karma_rm.json)."""

    variant: str
    target: TargetSpec | None = None
    features: FeatureSpec | None = None
    max_length: int = 256
    meta_hidden: int = 64
    subreddit_dim: int = 8
    random_seed: int = 0
    backbone: str | None = None
    extra: dict = field(default_factory=dict)  # provenance: epoch, metrics, config

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "variant": self.variant,
            "text_format": TEXT_FORMAT if self.variant in TEXT_VARIANTS else None,
            "tokenizer": {"padding_side": "right", "truncation_side": "left", "max_length": self.max_length}
            if self.variant in TEXT_VARIANTS else None,
            "max_length": self.max_length,
            "target": self.target.to_dict() if self.target else None,
            "features": self.features.to_dict() if self.features else None,
            "missing_metadata": "standardized to 0 (= the training mean)",
            "meta_hidden": self.meta_hidden,
            "subreddit_dim": self.subreddit_dim,
            "random_seed": self.random_seed,
            "backbone": self.backbone,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "RewardModelMeta":
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported {METADATA_FILE} format_version {d.get('format_version')!r}")
        t = d.get("target")
        return cls(
            variant=d["variant"],
            target=TargetSpec(t["column"], float(t["mean"]), float(t["std"])) if t else None,
            features=FeatureSpec.from_dict(d["features"]) if d.get("features") else None,
            backbone=d.get("backbone"),
            extra=d.get("extra") or {},
            **{k: int(d[k]) for k in ("max_length", "meta_hidden", "subreddit_dim", "random_seed")},
        )

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / METADATA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False))
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RewardModelMeta":
        path = Path(folder) / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a karma reward model folder")
        return cls.from_dict(json.loads(path.read_text()))


class MetaHead(nn.Module):
    """MLP over standardized metadata features and a learned subreddit-bucket embedding -> (B,)."""

    def __init__(self, num_features: int, subreddit_buckets: int, subreddit_dim: int, hidden: int) -> None:
        super().__init__()
        # Index `subreddit_buckets` = unknown subreddit: a zero vector that is never trained (padding_idx).
        self.subreddit = nn.Embedding(subreddit_buckets + 1, subreddit_dim, padding_idx=subreddit_buckets) if subreddit_buckets else None
        width = num_features + (subreddit_dim if self.subreddit is not None else 0)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, subreddit_bucket: torch.Tensor) -> torch.Tensor:
        x = features  # (B, F)
        if self.subreddit is not None:
            x = torch.cat([x, self.subreddit(subreddit_bucket)], dim=-1)  # (B, F + D)
        return self.mlp(x).squeeze(-1)  # (B,)


class RewardModel(nn.Module):
    """classifier(text) + meta_head(metadata); either part may be absent (see the module docstring)."""

    def __init__(self, text_model: nn.Module | None, meta_head: MetaHead | None) -> None:
        super().__init__()
        self.text_model = text_model
        self.meta_head = meta_head

    def forward(self, inputs: RewardInputs) -> torch.Tensor:
        score = None
        if self.text_model is not None:
            kwargs = {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask}
            if inputs.token_type_ids is not None:
                kwargs["token_type_ids"] = inputs.token_type_ids
            score = self.text_model(**kwargs).logits.squeeze(-1).float()  # (B,)
        if self.meta_head is not None:
            meta = self.meta_head(inputs.features, inputs.subreddit_bucket)  # (B,)
            score = meta if score is None else score + meta
        if score is None:
            raise RuntimeError("a control reward model (random/constant) has no network to run")
        return score

    def head_parameters(self) -> list[nn.Parameter]:
        """Freshly initialized parameters (score head, metadata MLP): trained at train.head_lr."""
        params = list(self.meta_head.parameters()) if self.meta_head is not None else []
        if self.text_model is not None:
            # Top-level modules that AutoModelForSequenceClassification adds on top of the base model
            # ("classifier" for BERT-likes, "score" for Llama/Qwen/GPT-2).
            base = getattr(self.text_model, "base_model_prefix", "")
            head_names = {name for name, _ in self.text_model.named_children() if name != base}
            params += [p for n, p in self.text_model.named_parameters() if n.split(".")[0] in head_names]
        return params


def load_sequence_classifier(path_or_id: str, dtype: str = "float32", trust_remote_code: bool = False, pad_token_id: int | None = None):
    """AutoModelForSequenceClassification(num_labels=1) with karma_ray.models.hf's defaults (safetensors only,
    remote code off). Decoders need `pad_token_id` in their config to find the last non-pad token."""
    from transformers import AutoConfig

    from karma_ray.models.hf import from_pretrained
    from karma_ray.models.packaged import resolve_model

    path_or_id = resolve_model(str(path_or_id))  # a packaged: id is converted on this node, once
    config = AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code, num_labels=1)
    config.problem_type = "regression"
    if getattr(config, "pad_token_id", None) is None and pad_token_id is not None:
        config.pad_token_id = pad_token_id
    return from_pretrained("AutoModelForSequenceClassification", path_or_id, dtype, trust_remote_code, config=config)


def load_rm_tokenizer(path_or_id: str, trust_remote_code: bool = False):
    """Right padding, left truncation (see karma_ray/reward/inputs.py); the saved tokenizer keeps both settings."""
    from karma_ray.models.hf import load_tokenizer

    tokenizer = load_tokenizer(path_or_id, trust_remote_code=trust_remote_code, padding_side="right")
    tokenizer.truncation_side = "left"
    return tokenizer


def build_reward_model(meta: RewardModelMeta, backbone: str | None, dtype: str = "float32", trust_remote_code: bool = False, seed: int | None = 0):
    """A new reward model (text part from `backbone`, fresh heads seeded unless `seed` is None) -> (model, tokenizer or None)."""
    if seed is not None:
        torch.manual_seed(seed)
    tokenizer = text_model = meta_head = None
    if meta.variant in TEXT_VARIANTS:
        tokenizer = load_rm_tokenizer(backbone, trust_remote_code)
        text_model = load_sequence_classifier(backbone, dtype, trust_remote_code, pad_token_id=tokenizer.pad_token_id)
    if meta.variant in META_VARIANTS:
        spec = meta.features
        meta_head = MetaHead(len(spec.columns), spec.subreddit_buckets if spec.uses_subreddit else 0, meta.subreddit_dim, meta.meta_hidden)
    return RewardModel(text_model, meta_head), tokenizer


def save_reward_model(folder: str | os.PathLike, model: RewardModel | None, tokenizer: Any, meta: RewardModelMeta,
                      state_dict: dict | None = None) -> Path:
    """Write the folder described in the module docstring (safetensors only). `state_dict` (the whole
    RewardModel's, e.g. gathered under ZeRO-3) replaces the module's own tensors."""
    from safetensors.torch import save_file

    def part(prefix: str) -> dict | None:
        if state_dict is None:
            return None
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if model is not None and model.text_model is not None:
        model.text_model.save_pretrained(out, safe_serialization=True, state_dict=part("text_model."))
        tokenizer.save_pretrained(out)
    if model is not None and model.meta_head is not None:
        head = part("meta_head.") or model.meta_head.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(out / META_HEAD_FILE))
    meta.save(out)
    return out


def load_reward_model(folder: str | os.PathLike, device: str = "cpu", dtype: str = "float32"):
    """-> (RewardModel or None for controls, tokenizer or None, RewardModelMeta), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = RewardModelMeta.load(folder)
    if meta.variant in CONTROL_VARIANTS:
        return None, None, meta
    model, tokenizer = build_reward_model(meta, str(folder), dtype, seed=None)
    if model.meta_head is not None:
        model.meta_head.load_state_dict(load_file(str(folder / META_HEAD_FILE)))
    return model.to(device).eval(), tokenizer, meta
