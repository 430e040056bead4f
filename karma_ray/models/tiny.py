"""Tiny random-init models and tokenizers, saved like any Hugging Face checkpoint.

No weights can be downloaded here, so tests, the demo and benchmarks build their models from a
config and save them (safetensors + tokenizer) to a folder; everything downstream then loads them
by path through `karma_ray.models.hf`, exactly as it would load a hub checkpoint.

Tokenizers: the real GPT-2 BPE files (../shared/data/tokenizers/gpt2, 50,257 tokens) when present,
or a small byte-level BPE trained on the corpus itself (`train_bpe_tokenizer`), which keeps tiny
models tiny and needs no shared data (the demo uses it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

SPECIAL_TOKENS = ("<|endoftext|>",)  # GPT-2's single special token: bos = eos = pad


def gpt2_tokenizer(tokenizer_dir: str | os.PathLike):
    """The real GPT-2 tokenizer from its vocab/merges files (no network)."""
    from transformers import GPT2TokenizerFast

    d = Path(tokenizer_dir)
    # transformers 5 takes `vocab`/`merges` (4.x took vocab_file/merges_file and 5.x silently
    # ignores those, giving an EMPTY vocabulary): check the size so that can never pass unnoticed.
    tok = GPT2TokenizerFast(vocab=str(d / "gpt2_vocab.json"), merges=str(d / "gpt2_merges.txt"))
    tok.pad_token = tok.eos_token
    if len(tok) != 50257:
        raise RuntimeError(f"GPT-2 tokenizer from {d} has {len(tok)} tokens, expected 50257")
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """A byte-level BPE tokenizer (GPT-2 style) trained on `texts`; `<|endoftext|>` is bos/eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    eot = SPECIAL_TOKENS[0]
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=eot, eos_token=eot, pad_token=eot, unk_token=eot)


def save_tiny_llama(
    output_dir: str | os.PathLike,
    tokenizer,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: Optional[int] = None,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> Path:
    """A random-init LlamaForCausalLM + its tokenizer, saved as safetensors; returns the folder.

    vLLM's CPU attention supports head sizes 32, 64, 80, ... only (head_dim 16 fails at the first
    forward with "Unsupported CPU attention configuration"), hence 2 heads of 32 by default;
    models only ever run by transformers may use any head size.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,  # True: lm_head IS embed_tokens (SmolLM2, Gemma, Qwen-0.5B)
    )
    return _save(LlamaForCausalLM, cfg, tokenizer, output_dir, seed)


def save_tiny_bert(output_dir: str | os.PathLike, tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0) -> Path:
    """A random-init BERT-style encoder + tokenizer (a stand-in encoder backbone for reward models)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save(BertModel, cfg, tokenizer, output_dir, seed)


def _save(model_class, config, tokenizer, output_dir: str | os.PathLike, seed: int) -> Path:
    """A random-init `model_class(config)` (seeded) and the tokenizer, saved as safetensors into `output_dir`."""
    import torch

    torch.manual_seed(seed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_class(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_corpus_models(prepared: str | os.PathLike, out: str | os.PathLike, vocab_size: int = 2048,
                        texts_per_column: int = 4000) -> tuple[Path, Path]:
    """A byte-level BPE tokenizer trained on a prepared corpus's train contexts and replies, and two
    random-init models on it: a tiny Llama policy (out/policy) and a tiny BERT backbone (out/rm_backbone).
    Needs no download and no shared data (the demo and the tiny experiment use it)."""
    import pyarrow.parquet as pq

    from karma_ray.data.corpus import PreparedCorpus

    out = Path(out)
    texts: list[str] = []
    for f in PreparedCorpus.open(prepared, splits=("train",)).example_files("train"):
        t = pq.read_table(f, columns=["context", "reply"])
        texts += t.column("context").to_pylist()[:texts_per_column] + t.column("reply").to_pylist()[:texts_per_column]
    tok = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    policy = save_tiny_llama(out / "policy", tok, hidden_size=64, num_layers=2, num_heads=2, max_position_embeddings=512)
    backbone = save_tiny_bert(out / "rm_backbone", tok, hidden_size=64, num_layers=2, num_heads=2)
    return policy, backbone
