"""Data lineage of a model: which prepared corpora it (and every model it was built from) was trained on.

The KARMA experiments compare an "exposure" policy (fine-tuned on a Reddit corpus) with a "no exposure"
one; the comparison only means something if the second provably never saw that corpus. Every stage that
exports a model writes `lineage.json` beside its weights:

    {"format": "karma_ray.lineage/1",
     "model": "/runs/sft/model",
     "stages": [                                   # oldest first; a stage copies its base model's list
        {"stage": "sft", "base_model": "/runs/tiny", "data": "/runs/prepared",
         "manifest_sha256": "…", "manifest_inputs": [{"path": "RC_2015-01.zst", "bytes": …}, …],
         "splits": ["train"], "num_examples": 4321, "example_ids_sha256": "…",
         "example_ids_file": "/runs/sft/train_example_ids.parquet", "config_sha256": "…",
         "created_utc": "2026-11-22T10:00:00+00:00", …stage-specific keys…}]}

A model folder without `lineage.json` (a random-init model, or a hub checkpoint) has an empty chain: no
exposure to any corpus prepared here. Stages are generic dicts so PPO (prompts from a manifest) appends
its own entry the same way (`data_stage` + `extend_lineage`).

Standard library and pyarrow only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from karma_ray.data.corpus import MANIFEST_FILE

LINEAGE_FILE = "lineage.json"
IDS_FILE = "train_example_ids.parquet"
FORMAT = "karma_ray.lineage/1"


class LineageError(ValueError):
    """A lineage file or manifest that cannot be read."""


class ExposureError(AssertionError):
    """A model (or one of its ancestors) was trained on data it must not have seen."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_file(path: str | os.PathLike) -> Path:
    """A prepared folder or its manifest.json -> the manifest file (checked to exist)."""
    p = Path(path)
    p = p / MANIFEST_FILE if p.is_dir() else p
    if not p.is_file():
        raise LineageError(f"no manifest at {p} (expected a `karma prepare` output folder or its {MANIFEST_FILE})")
    return p


def example_ids_digest(ids: Iterable[str]) -> str:
    """sha256 of the sorted, newline-joined ids: equal exactly when the example sets are equal."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LineageError(f"{path} is not valid JSON: {exc}") from None


def json_digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def data_stage(
    stage: str,
    base_model: str,
    prepared_dir: str | os.PathLike,
    splits: Sequence[str],
    example_ids: Sequence[str],
    config: dict,
    **extra: Any,
) -> dict:
    """One lineage entry: a model trained from `base_model` on examples of a prepared corpus."""
    manifest = manifest_file(prepared_dir)
    inputs = _read_json(manifest).get("inputs", [])
    return {
        "stage": stage,
        "base_model": str(base_model),
        "data": str(Path(prepared_dir).resolve()),
        "manifest_sha256": file_sha256(manifest),
        "manifest_inputs": [{"path": i.get("path"), "bytes": i.get("bytes")} for i in inputs],
        "splits": list(splits),
        "num_examples": len(example_ids),
        "example_ids_sha256": example_ids_digest(example_ids),
        "config_sha256": json_digest(config),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def read_lineage(model_dir: str | os.PathLike) -> dict | None:
    """The lineage of a model folder (or of a run folder holding it), None when it has none."""
    path = Path(model_dir) / LINEAGE_FILE
    if not path.is_file():  # e.g. a hub id that is not a local folder: nothing trained here, no recorded exposure
        return None
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("stages"), list):
        raise LineageError(f"{path} is not a {FORMAT} lineage file")
    return data


def lineage_stages(model_dir: str | os.PathLike) -> list[dict]:
    data = read_lineage(model_dir)
    return list(data["stages"]) if data else []


def extend_lineage(base_model: str | os.PathLike, stage: dict, model_dir: str | os.PathLike) -> dict:
    """The lineage of a model built from `base_model` by `stage`: the base's chain, then the stage."""
    return {"format": FORMAT, "model": str(Path(model_dir).resolve()), "stages": [*lineage_stages(base_model), stage]}


def write_lineage(lineage: dict, folder: str | os.PathLike) -> Path:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LINEAGE_FILE
    path.write_text(json.dumps(lineage, indent=2) + "\n")
    return path


def write_example_ids(ids: Sequence[str], path: str | os.PathLike) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": pa.array(sorted(ids), pa.string())}), path)
    return Path(path)


def corpora_seen(model_dir: str | os.PathLike) -> list[str]:
    """Manifest sha256 of every corpus the model or an ancestor was trained on (oldest first, unique)."""
    return list(dict.fromkeys(s["manifest_sha256"] for s in lineage_stages(model_dir) if s.get("manifest_sha256")))


def assert_no_exposure(model_dir: str | os.PathLike, manifest: str | os.PathLike) -> None:
    """Raise ExposureError if the model or any ancestor was trained on the corpus of `manifest`.

    Two checks: the same manifest file (sha256), and the same raw input files (path and size) behind a
    different manifest, which catches the same dumps prepared again with other settings.
    """
    mpath = manifest_file(manifest)
    sha = file_sha256(mpath)
    inputs = {(i.get("path"), i.get("bytes")) for i in _read_json(mpath).get("inputs", [])}
    for depth, s in enumerate(lineage_stages(model_dir)):
        where = f"stage {depth} ('{s.get('stage')}', base {s.get('base_model')}, data {s.get('data')}, {s.get('created_utc')})"
        if s.get("manifest_sha256") == sha:
            raise ExposureError(
                f"{model_dir} was trained on the corpus of {mpath} (manifest sha256 {sha[:12]}…) in {where}: "
                f"{s.get('num_examples')} examples of splits {s.get('splits')}"
            )
        shared = inputs & {(i.get("path"), i.get("bytes")) for i in s.get("manifest_inputs", [])}
        if shared:
            names = ", ".join(sorted(str(p) for p, _ in shared)[:5])
            raise ExposureError(
                f"{model_dir} was trained on a corpus prepared from the same raw inputs as {mpath} in {where}: {names}"
            )
