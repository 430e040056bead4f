"""Input discovery and chunked reading of Reddit dumps (pure Python; the Ray datasource wraps it).

Formats (decided per path by `resolve_inputs`):
- Pushshift / Arctic Shift `.zst`: zstd with a 2 GiB window, which pyarrow's own zstd reader
  refuses (docs/STACK.md); decompressed here with python-zstandard, frame by frame.
- `.jsonl` / `.ndjson` / `.json`, optionally `.gz` or `.zst`.
- ConvoKit corpus folders (`utterances.jsonl` + `conversations.json`): converted line by line to
  Pushshift-format objects, so one parser serves every source.
- `.parquet` with Pushshift field names (read by Ray Data's own Parquet reader in prepare.py).

`iter_chunks` yields newline-aligned pieces of decompressed text of about `chunk_bytes`, so that
parsing can run in parallel within one big file while its decompression streams sequentially. A
truncated or corrupt file yields everything readable and then a chunk flagged `truncated_tail`
with the error, so the cut-off last line is counted and the file is named in the manifest.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import orjson
import zstandard

from karma_ray.data.records import COMMENT, SUBMISSION

ZSTD_MAX_WINDOW = 2**31  # Pushshift dumps are compressed with --long=31
READ_SIZE = 1 << 20
# Compressed bytes fed to the zstd decoder at a time: each call returns ALL the text they decode
# to, so this bounds the decoder's output buffer (~10x for Reddit JSON).
ZSTD_READ_SIZE = 1 << 18

Format = Literal["pushshift", "jsonl", "convokit", "parquet"]
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


class InputError(ValueError):
    """A path that does not exist or cannot be read as any known format (raised before any work)."""


@dataclass(frozen=True)
class InputFile:
    path: str
    format: Format
    compression: Literal["zst", "gz", "none"]
    kind_hint: str  # COMMENT or SUBMISSION: how malformed lines of this file are counted
    size_bytes: int


@dataclass(frozen=True)
class Chunk:
    source: str
    index: int
    kind_hint: str
    data: bytes  # newline-aligned, except the tail of a truncated file
    truncated_tail: bool = False
    error: str | None = None  # why the file ended early (truncation / corruption)


def kind_hint_for(path: str) -> str:
    """RS_* / *_submissions* files hold submissions; everything else is counted as comments."""
    name = os.path.basename(path).lower()
    return SUBMISSION if name.startswith("rs_") or "submission" in name else COMMENT


def _classify_file(path: str) -> InputFile:
    name = os.path.basename(path).lower()
    size = os.path.getsize(path)
    if name.endswith(".parquet"):
        return InputFile(path, "parquet", "none", kind_hint_for(path), size)
    compression: Literal["zst", "gz", "none"] = "none"
    stem = name
    if name.endswith(".zst"):
        compression, stem = "zst", name[:-4]
    elif name.endswith(".gz"):
        compression, stem = "gz", name[:-3]
    if compression == "zst" and not stem.endswith(JSON_SUFFIXES):
        # RC_2005-12.zst, AskMen_comments.zst: Pushshift/Arctic Shift dumps are JSON lines in zstd.
        return InputFile(path, "pushshift", "zst", kind_hint_for(path), size)
    if stem.endswith(JSON_SUFFIXES):
        return InputFile(path, "jsonl", compression, kind_hint_for(path), size)
    raise InputError(
        f"unknown input format: {path} (expected .zst, .jsonl/.ndjson/.json[.gz|.zst], .parquet or a ConvoKit folder)"
    )


def resolve_inputs(paths: list[str], fmt: str = "auto") -> list[InputFile]:
    """Expand globs and folders, check every path exists and has a known format.

    A folder is a ConvoKit corpus if it holds utterances.jsonl, else every known file inside it
    (not recursive) is an input. Raises InputError naming the first bad path.
    """
    if not paths:
        raise InputError("no input paths given")
    out: list[InputFile] = []
    for raw in paths:
        matches = sorted(glob.glob(raw)) if any(ch in raw for ch in "*?[") else [raw]
        if not matches:
            raise InputError(f"no files match: {raw}")
        for path in matches:
            p = Path(path)
            if not p.exists():
                raise InputError(f"input path does not exist: {path}")
            if p.is_dir():
                if (p / "utterances.jsonl").is_file():  # a ConvoKit corpus
                    size = (p / "utterances.jsonl").stat().st_size
                    out.append(InputFile(str(p), "convokit", "none", COMMENT, size))
                    continue
                inside = [f for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".")]
                found = [_classify_file(str(f)) for f in inside if _known_suffix(f.name)]
                if not found:
                    raise InputError(f"folder has no Reddit dump files: {path}")
                out.extend(found)
            else:
                out.append(_classify_file(str(p)))
    for f in out:
        if fmt not in ("auto", f.format):
            raise InputError(f"read.format={fmt} but {f.path} looks like {f.format}")
    return out


def _known_suffix(name: str) -> bool:
    """Dump files inside a folder. A bare `.json` inside a folder is metadata (a summary, a
    ConvoKit index), not JSON lines; name such a file explicitly to read it as a dump."""
    n = name.lower()
    return not n.endswith(".json") and n.endswith((".zst", ".gz", ".parquet") + JSON_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# Byte streams
# ---------------------------------------------------------------------------------------------


class TruncatedInput(Exception):
    """Raised by a byte stream after its readable data, when the file ended early or is corrupt."""


def _zstd_stream(path: str) -> Iterator[bytes]:
    # stream_reader() silently stops at a truncated frame; decompressobj() lets us check `eof`.
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    obj = dctx.decompressobj()
    fed = False  # has the current frame received input?
    with open(path, "rb") as f:
        while True:
            buf = f.read(ZSTD_READ_SIZE)
            if not buf:
                break
            while buf:
                try:
                    out = obj.decompress(buf)
                except zstandard.ZstdError as exc:
                    raise TruncatedInput(f"corrupt zstd data: {exc}") from None
                fed = True
                if out:
                    yield out
                if obj.eof:  # end of a frame; pzstd-style files hold several
                    buf = obj.unused_data
                    obj = dctx.decompressobj()
                    fed = False
                else:
                    buf = b""
    if fed and not obj.eof:
        raise TruncatedInput("zstd stream ended before the end of its frame (truncated file)")


def _gzip_stream(path: str) -> Iterator[bytes]:
    with gzip.open(path, "rb") as f:
        while True:
            try:
                buf = f.read(READ_SIZE)
            except EOFError as exc:
                raise TruncatedInput(f"gzip stream ended early: {exc}") from None
            except OSError as exc:
                raise TruncatedInput(f"corrupt gzip data: {exc}") from None
            if not buf:
                return
            yield buf


def _plain_stream(path: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            buf = f.read(READ_SIZE if remaining is None else min(READ_SIZE, remaining))
            if not buf:
                return
            if remaining is not None:
                remaining -= len(buf)
            yield buf


def _aligned_chunks(stream: Iterator[bytes], f: InputFile, chunk_bytes: int) -> Iterator[Chunk]:
    """Re-cut a byte stream into newline-aligned chunks; a partial trailing line is carried over
    (it may also hold half of a UTF-8 character, which is why we cut on bytes, never on text)."""
    pending = bytearray()
    index = 0
    try:
        for buf in stream:
            pending += buf
            while len(pending) >= chunk_bytes:
                # Cut at the last newline within the chunk size, else after an over-long line.
                cut = pending.rfind(b"\n", 0, chunk_bytes)
                if cut < 0:
                    cut = pending.find(b"\n", chunk_bytes)
                    if cut < 0:
                        break
                yield Chunk(f.path, index, f.kind_hint, bytes(pending[: cut + 1]))
                index += 1
                del pending[: cut + 1]
    except TruncatedInput as exc:
        yield Chunk(f.path, index, f.kind_hint, bytes(pending), truncated_tail=True, error=str(exc))
        return
    if pending:
        yield Chunk(f.path, index, f.kind_hint, bytes(pending))


def iter_chunks(f: InputFile, chunk_bytes: int, shard: int = 0, n_shards: int = 1) -> Iterator[Chunk]:
    """A file's text as newline-aligned chunks (ConvoKit converted to Pushshift objects).

    With n_shards > 1, only the chunks whose index % n_shards == shard: that is how several read
    tasks share ONE compressed file. zstd cannot seek, so each decompresses the whole stream (the
    cheap part, ~1/4 of parsing) and parses its own share of the chunks.
    """
    if f.format == "parquet":
        raise InputError(f"{f.path}: format {f.format} is not read as text")
    if f.format == "convokit":
        stream = convokit_as_pushshift(Path(f.path))
    else:
        stream = {"zst": _zstd_stream, "gz": _gzip_stream, "none": _plain_stream}[f.compression](f.path)
    for chunk in _aligned_chunks(stream, f, chunk_bytes):
        if chunk.index % n_shards == shard:
            yield chunk


def read_plan(f: InputFile, chunk_bytes: int, n_tasks: int) -> list[tuple[str, int, int]]:
    """How `n_tasks` read tasks split one file: ("range", start, end) byte ranges of an uncompressed
    file, ("shard", i, n) chunk shards of a compressed one, or one ("whole", 0, 1) task."""
    if n_tasks <= 1:
        return [("whole", 0, 1)]
    if f.compression == "none" and f.format == "jsonl":
        return [("range", s, e) for s, e in plain_ranges(f, chunk_bytes, n_tasks)]
    return [("shard", i, n_tasks) for i in range(n_tasks)]


def plain_ranges(f: InputFile, chunk_bytes: int, n_ranges: int) -> list[tuple[int, int]]:
    """Byte ranges that split an UNCOMPRESSED jsonl file across n_ranges > 1 read tasks (read_plan
    checks both; each task reads its own lines: those that START inside its range)."""
    if f.size_bytes <= 2 * chunk_bytes:
        return [(0, f.size_bytes)]
    step = max(chunk_bytes, -(-f.size_bytes // n_ranges))
    return [(s, min(s + step, f.size_bytes)) for s in range(0, f.size_bytes, step)]


def iter_range_chunks(f: InputFile, start: int, end: int, chunk_bytes: int) -> Iterator[Chunk]:
    """Chunks of the lines that start in [start, end) of an uncompressed file."""
    with open(f.path, "rb") as fh:
        if start > 0:
            fh.seek(start - 1)
            if fh.read(1) != b"\n":
                fh.readline()  # the line in progress belongs to the previous range
        begin = fh.tell()
        fh.seek(end)
        if end < f.size_bytes:
            fh.readline()  # finish the line that started before `end`
        stop = fh.tell() if end < f.size_bytes else f.size_bytes
    chunk_index_base = start // max(chunk_bytes, 1) * 1000  # unique chunk ids across ranges
    for c in _aligned_chunks(_plain_stream(f.path, begin, stop), f, chunk_bytes):
        yield dataclasses.replace(c, index=chunk_index_base + c.index)


# ---------------------------------------------------------------------------------------------
# ConvoKit
# ---------------------------------------------------------------------------------------------


def convokit_to_pushshift(utt: dict, titles: dict[str, str], subreddit_default: str) -> dict:
    """One ConvoKit utterance -> a Pushshift-format comment or submission object.

    ConvoKit ids carry no t1_/t3_ prefix; the post itself is the utterance whose id equals its
    conversation_id (its text is the selftext, its title lives in conversations.json); the
    reply key on disk is `reply-to` (docs/REDDIT.md).
    """
    meta = utt.get("meta") or {}
    uid, conv = utt.get("id"), utt.get("conversation_id")
    common = {
        "id": uid,
        "author": utt.get("speaker"),
        "score": meta.get("score"),
        "created_utc": utt.get("timestamp"),
        "retrieved_on": meta.get("retrieved_on"),
        "subreddit": meta.get("subreddit") or subreddit_default,
        "stickied": meta.get("stickied"),
        "gilded": meta.get("gilded"),
    }
    if uid is not None and uid == conv:
        return {**common, "title": titles.get(conv, ""), "selftext": utt.get("text") or ""}
    parent = utt.get("reply-to", utt.get("reply_to"))
    # no parent: neither a post nor a reply, so the parser reports it as malformed
    parent_full = None if parent is None else ("t3_" if parent == conv else "t1_") + str(parent)
    return {**common, "parent_id": parent_full, "link_id": f"t3_{conv}", "body": utt.get("text")}


def convokit_as_pushshift(folder: Path) -> Iterator[bytes]:
    """Stream a ConvoKit corpus's utterances as Pushshift JSON lines; unparsable lines pass
    through unchanged so that the parser counts them as malformed."""
    conv_path, corpus_path = folder / "conversations.json", folder / "corpus.json"
    convs = orjson.loads(conv_path.read_bytes()) if conv_path.is_file() else {}
    titles = {cid: title for cid, conv in convs.items() if (title := (conv.get("meta") or {}).get("title")) is not None}
    subreddit = (orjson.loads(corpus_path.read_bytes()).get("subreddit") or "") if corpus_path.is_file() else ""
    batch: list[bytes] = []
    with open(folder / "utterances.jsonl", "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                utt = orjson.loads(line)
                if not isinstance(utt, dict):
                    raise ValueError
                batch.append(orjson.dumps(convokit_to_pushshift(utt, titles, subreddit)) + b"\n")
            except (orjson.JSONDecodeError, ValueError, TypeError):
                batch.append(line if line.endswith(b"\n") else line + b"\n")
            if len(batch) >= 4096:
                yield b"".join(batch)
                batch = []
    if batch:
        yield b"".join(batch)
