"""A toxicity classifier in torch: the Jigsaw BiLSTM of `toxic-comment-classifier` 0.3.0, ported.

The package's Keras model (`toxic_classifier/model.py`):

    ids (B, 100) -> Embedding(20000, 50) -> Bidirectional(LSTM(50), return_sequences) (B, 100, 100)
    -> GlobalMaxPooling1D (B, 100) -> Dense(50, relu) -> Dense(6, sigmoid) (B, 6)

over the six Jigsaw labels. Its text side is a Keras `Tokenizer` (lower-case, punctuation filtered,
split on spaces, words ranked by training frequency, ids >= num_words dropped) and
`pad_sequences(maxlen=100)` (keep the LAST 100 ids, zeros in front). Keras' LSTM gates are ordered
i, f, c, o like torch's i, f, g, o, so its kernels go into `nn.LSTM` transposed, with its single bias
as `bias_ih` and a zero `bias_hh`.

A converted folder holds `config.json`, `model.safetensors` and `vocab.json` (the word -> id map and
the tokenizer settings): loading it never unpickles anything. The package's pickled tokenizer is read
once, at conversion, by an unpickler that refuses every class but the Keras Tokenizer (received into a
plain attribute holder, no Keras code runs) and plain containers (see `_TokenizerUnpickler`).
"""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
# Keras' Tokenizer default filters: these characters become word separators.
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


@dataclass(frozen=True)
class ToxicityConfig:
    vocab_size: int = 20000
    embedding_dim: int = 50
    lstm_units: int = 50
    dense_units: int = 50
    max_len: int = 100
    labels: tuple[str, ...] = LABELS


@dataclass(frozen=True)
class WordTokenizer:
    """Keras `Tokenizer.texts_to_sequences` + `pad_sequences`, from a plain word -> id map."""

    word_index: dict[str, int]
    num_words: int
    max_len: int
    filters: str = KERAS_FILTERS
    lower: bool = True
    split: str = " "
    oov_index: int | None = None

    def words(self, text: str) -> list[str]:
        if self.lower:
            text = text.lower()
        text = text.translate(str.maketrans({c: self.split for c in self.filters}))
        return [w for w in text.split(self.split) if w]

    def ids(self, text: str) -> list[int]:
        out = []
        for word in self.words(text):
            i = self.word_index.get(word)
            if i is not None and i < self.num_words:
                out.append(i)
            elif self.oov_index is not None:
                out.append(self.oov_index)
        return out

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, max_len) int64: the last max_len ids of each text, left-padded with 0 (Keras 'pre')."""
        batch = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.ids(text)[-self.max_len:]
            if ids:
                batch[row, self.max_len - len(ids):] = torch.tensor(ids, dtype=torch.long)
        return batch


class ToxicityClassifier(nn.Module):
    def __init__(self, config: ToxicityConfig, tokenizer: WordTokenizer):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.lstm = nn.LSTM(config.embedding_dim, config.lstm_units, batch_first=True, bidirectional=True)
        self.hidden = nn.Linear(2 * config.lstm_units, config.dense_units)
        self.out = nn.Linear(config.dense_units, len(config.labels))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 -> label probabilities (B, L)."""
        states, _ = self.lstm(self.embedding(ids))  # (B, T, 2U)
        pooled = states.max(dim=1).values  # (B, 2U)
        return torch.sigmoid(self.out(torch.relu(self.hidden(pooled))))

    @torch.no_grad()
    def predict(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> (N, L) probabilities, in order."""
        self.eval()
        parts = [self(self.tokenizer.encode(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self.config.labels))

    def toxicity(self, texts: Sequence[str]) -> list[float]:
        """P(toxic) per text: the label RealToxicityPrompts-style metrics threshold at 0.5."""
        return self.predict(texts)[:, self.config.labels.index("toxic")].tolist()

    def save_pretrained(self, out: str | Path) -> None:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"model_type": "karma-toxicity-bilstm", **asdict(self.config)}, indent=2))
        tok = self.tokenizer
        vocab = {"num_words": tok.num_words, "max_len": tok.max_len, "filters": tok.filters, "lower": tok.lower,
                 "split": tok.split, "oov_index": tok.oov_index,
                 # only the ids the model can see: the Keras word_index lists ~200k words
                 "word_index": {w: i for w, i in tok.word_index.items() if i < tok.num_words}}
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ToxicityClassifier":
        """A converted folder (config.json, vocab.json, model.safetensors); for `packaged:` ids use
        karma_ray.models.hf.load_toxicity_classifier."""
        from safetensors.torch import load_file

        path = Path(path)
        raw = json.loads((path / "config.json").read_text())
        raw.pop("model_type", None)
        config = ToxicityConfig(**{**raw, "labels": tuple(raw["labels"])})
        v = json.loads((path / "vocab.json").read_text())
        tokenizer = WordTokenizer(word_index=v["word_index"], num_words=v["num_words"], max_len=v["max_len"],
                                  filters=v["filters"], lower=v["lower"], split=v["split"], oov_index=v["oov_index"])
        model = cls(config, tokenizer)
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval()


# --------------------------------------------------------------------------------------------------
# Conversion from the Keras package (once, into the packaged cache)


class _KerasTokenizerState:
    """Receives the pickled Keras Tokenizer's attributes; no Keras code runs."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class _TokenizerUnpickler(pickle.Unpickler):
    # "Restricting globals" (Python's pickle docs): any class not listed is refused, so the file
    # cannot make this process run code.
    ALLOWED = {
        ("keras.src.legacy.preprocessing.text", "Tokenizer"): _KerasTokenizerState,
        ("keras.preprocessing.text", "Tokenizer"): _KerasTokenizerState,
        ("collections", "OrderedDict"): OrderedDict,
        # defaultdict(int) / defaultdict(list) of word counts: kept as plain dicts
        ("collections", "defaultdict"): lambda *factory: {},
        ("builtins", "int"): int,
        ("builtins", "list"): list,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a tokenizer pickle") from None


def read_keras_tokenizer(path: str | Path, max_len: int) -> WordTokenizer:
    with open(path, "rb") as handle:
        state = _TokenizerUnpickler(handle).load()
    attrs = vars(state)
    if attrs.get("char_level"):
        raise ValueError("character-level Keras tokenizers are not supported")
    word_index = {str(w): int(i) for w, i in attrs["word_index"].items()}
    oov = attrs.get("oov_token")
    return WordTokenizer(
        word_index=word_index, num_words=int(attrs["num_words"] or len(word_index) + 1), max_len=max_len,
        filters=attrs.get("filters", KERAS_FILTERS), lower=bool(attrs.get("lower", True)),
        split=attrs.get("split", " "), oov_index=word_index.get(oov) if oov is not None else None,
    )


def convert_keras_package(weights_h5: Path, tokenizer_pickle: Path, out: Path) -> None:
    import h5py

    config = ToxicityConfig()
    tokenizer = read_keras_tokenizer(tokenizer_pickle, config.max_len)
    if tokenizer.num_words != config.vocab_size:
        raise ValueError(f"tokenizer num_words {tokenizer.num_words} != embedding rows {config.vocab_size}")
    model = ToxicityClassifier(config, tokenizer)
    with h5py.File(weights_h5, "r") as f:
        def var(path: str) -> torch.Tensor:
            return torch.from_numpy(f[f"layers/{path}"][()].astype("float32"))

        state = {"embedding.weight": var("embedding/vars/0"),
                 "hidden.weight": var("dense/vars/0").T, "hidden.bias": var("dense/vars/1"),
                 "out.weight": var("dense_1/vars/0").T, "out.bias": var("dense_1/vars/1")}
        for suffix, direction in (("", "forward_layer"), ("_reverse", "backward_layer")):
            kernel, recurrent, bias = (var(f"bidirectional/{direction}/cell/vars/{i}") for i in range(3))
            state[f"lstm.weight_ih_l0{suffix}"] = kernel.T
            state[f"lstm.weight_hh_l0{suffix}"] = recurrent.T
            state[f"lstm.bias_ih_l0{suffix}"] = bias
            state[f"lstm.bias_hh_l0{suffix}"] = torch.zeros_like(bias)
    model.load_state_dict({k: v.contiguous() for k, v in state.items()})
    model.save_pretrained(out)
