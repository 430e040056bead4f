"""One raw Reddit record -> one normalized row, and the record-level filters.

Pure functions over bytes, dicts and Arrow tables (no Ray): the Ray Data pipeline in `prepare.py`
maps `parse_chunk` over newline-aligned chunks of decompressed dump text.

Every non-blank input line becomes exactly ONE row of `RECORD_SCHEMA`, so counts add up downstream:
- a comment or submission, normalized (ids without prefix, `created_utc` as int whatever its JSON
  type, Arctic Shift's re-fetched score time used as `retrieved_on`), with `drop_reason` set when a
  record-level filter rejects it (the row still travels: dropped comments remain context for replies);
- or a `malformed_*` row whose `drop_reason` names what was wrong (bad JSON, invalid UTF-8, a
  missing field, a value of the wrong type, a line cut off by a truncated file).

Two parse paths give identical rows: pyarrow's JSON reader on the whole chunk (fast), and orjson
line by line (used when pyarrow rejects the chunk: one bad line makes it refuse the whole block).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from karma_ray.config import FilterConfig

# Kinds of records, as they appear in `record_kind`.
COMMENT = "comment"
SUBMISSION = "submission"
MALFORMED_COMMENT = "malformed_comment"
MALFORMED_SUBMISSION = "malformed_submission"

# Link ids of malformed rows start with this, so they are grouped apart from real threads.
MALFORMED_LINK_PREFIX = "~malformed/"

RECORD_SCHEMA = pa.schema(
    [
        ("record_kind", pa.string()),
        ("id", pa.string()),  # base-36, no prefix
        ("parent_id", pa.string()),  # fullname: t1_<comment> or t3_<submission>; null for submissions
        ("link_id", pa.string()),  # fullname t3_<thread>
        ("subreddit", pa.string()),
        ("author", pa.string()),
        ("text", pa.string()),  # comment body, submission selftext, or a snippet of a malformed line
        ("title", pa.string()),  # submissions only
        ("score", pa.int64()),
        ("created_utc", pa.int64()),
        ("retrieved_on", pa.int64()),  # null when unknown
        ("distinguished", pa.string()),
        ("stickied", pa.bool_()),
        ("drop_reason", pa.string()),
        ("source", pa.string()),
    ]
)

# What pyarrow's reader is asked for. The time fields are NOT here: their JSON type changes across
# dump years (strings in old dumps, ints later), so they are parsed with a per-chunk type (see
# `_TIME_TYPES`) and cast afterwards.
_BASE_FIELDS = [
    ("id", pa.string()),
    ("name", pa.string()),
    ("parent_id", pa.string()),
    ("link_id", pa.string()),
    ("subreddit", pa.string()),
    ("author", pa.string()),
    ("body", pa.string()),
    ("title", pa.string()),
    ("selftext", pa.string()),
    ("score", pa.int64()),
    ("distinguished", pa.string()),
    ("stickied", pa.bool_()),
    ("_meta", pa.struct([("retrieved_2nd_on", pa.int64())])),
]
_TIME_FIELDS = ("created_utc", "retrieved_on")
_TIME_TYPES = (pa.int64(), pa.string(), pa.float64())

SNIPPET_CHARS = 200
_ID_RE = re.compile(r"^[0-9a-z]+$")


class RecordError(ValueError):
    """A record that parses as JSON but cannot be normalized; the message is the malformed reason."""


@dataclass(frozen=True)
class ChunkInfo:
    """Where a chunk of lines came from (for malformed rows and error messages)."""

    source: str
    chunk_index: int
    kind_hint: str  # COMMENT or SUBMISSION: what a malformed line of this file is counted as


# ---------------------------------------------------------------------------------------------
# Field normalization (shared by both parse paths)
# ---------------------------------------------------------------------------------------------


def to_epoch_seconds(value: Any, field: str) -> int:
    """created_utc / retrieved_on as int seconds: ints, numeric strings ("1134000000"), floats."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            if isinstance(value, str) and ("." in value or "e" in value.lower()):
                value = float(value)
            return int(value)
        except ValueError:  # a string that is no number, or NaN
            pass
    raise RecordError(f"bad_type:{field}")


def strip_prefix(fullname: str) -> str:
    """'t1_abc' -> 'abc'; an id without prefix is returned unchanged."""
    return fullname[3:] if len(fullname) > 3 and fullname[0] == "t" and fullname[2] == "_" else fullname


def _optional_str(record: dict, field: str) -> str | None:
    value = record.get(field)
    if value is None or isinstance(value, str):
        return value
    raise RecordError(f"bad_type:{field}")


def _require_str(record: dict, field: str) -> str:
    if record.get(field) is None:
        raise RecordError(f"missing_field:{field}")
    return _optional_str(record, field)


def normalize_record(record: Any, source: str) -> dict:
    """One parsed JSON value -> a dict of RECORD_SCHEMA fields (drop_reason left None).

    Raises RecordError(reason) for anything that cannot be a comment or submission.
    """
    if not isinstance(record, dict):
        raise RecordError("not_an_object")
    rid = strip_prefix(_require_str(record, "id")).lower()
    if not _ID_RE.match(rid):
        raise RecordError("bad_value:id")
    score = record.get("score")
    if score is None:
        raise RecordError("missing_field:score")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise RecordError("bad_type:score")
    if "created_utc" not in record or record["created_utc"] is None:
        raise RecordError("missing_field:created_utc")
    created = to_epoch_seconds(record["created_utc"], "created_utc")
    retrieved = _retrieved_on(record)
    subreddit = _optional_str(record, "subreddit") or ""
    author = _optional_str(record, "author") or "[deleted]"
    distinguished = _optional_str(record, "distinguished")
    stickied = record.get("stickied")
    if stickied is not None and not isinstance(stickied, bool):
        raise RecordError("bad_type:stickied")
    parent = record.get("parent_id")
    if parent is not None:  # a comment
        parent = _require_str(record, "parent_id")
        link = _require_str(record, "link_id")
        body = _require_str(record, "body")
        if not parent.startswith(("t1_", "t3_")):
            raise RecordError("bad_value:parent_id")
        if not link.startswith("t3_"):
            raise RecordError("bad_value:link_id")
        kind, text, title = COMMENT, body, None
    elif record.get("title") is not None:  # a submission
        title = _require_str(record, "title")
        text = _optional_str(record, "selftext") or ""
        kind, link = SUBMISSION, "t3_" + rid
    else:
        raise RecordError("missing_field:parent_id" if "body" in record else "unknown_kind")
    return {
        "record_kind": kind,
        "id": rid,
        "parent_id": parent,
        "link_id": link,
        "subreddit": subreddit,
        "author": author,
        "text": text,
        "title": title,
        "score": int(score),
        "created_utc": created,
        "retrieved_on": retrieved,
        "distinguished": distinguished,
        "stickied": bool(stickied) if stickied is not None else False,
        "drop_reason": None,
        "source": source,
    }


def _retrieved_on(record: dict) -> int | None:
    # Arctic Shift re-fetches items ~36 h after posting and stores that time in _meta: the score in
    # the record is the re-fetched one, so that is when it was retrieved (docs/REDDIT.md).
    meta = record.get("_meta")
    if isinstance(meta, dict) and meta.get("retrieved_2nd_on") is not None:
        return to_epoch_seconds(meta["retrieved_2nd_on"], "retrieved_on")
    value = record.get("retrieved_on")
    if value is None:
        return None
    seconds = to_epoch_seconds(value, "retrieved_on")
    return seconds if seconds > 0 else None  # ConvoKit writes -1 for unknown


def malformed_row(info: ChunkInfo, reason: str, snippet: str) -> dict:
    """The row of a line that is not a record: these fields (rows_to_table leaves the others null)."""
    return {
        "record_kind": MALFORMED_SUBMISSION if info.kind_hint == SUBMISSION else MALFORMED_COMMENT,
        "link_id": f"{MALFORMED_LINK_PREFIX}{info.source}#{info.chunk_index}",
        "text": snippet[:SNIPPET_CHARS],
        "drop_reason": reason,
        "source": info.source,
    }


# ---------------------------------------------------------------------------------------------
# Parsing a chunk of lines
# ---------------------------------------------------------------------------------------------


def parse_lines(data: bytes, info: ChunkInfo, truncated_tail: bool = False) -> pa.Table:
    """Slow, exact path: orjson line by line; every non-blank line yields one row."""
    rows = []
    lines = data.split(b"\n")
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            # The last line of a file that ended early was cut off mid-record.
            reason = "truncated_line" if truncated_tail and i == last else "bad_json"
            reason = reason if _is_utf8(line) else "invalid_utf8"
            rows.append(malformed_row(info, reason, line.decode("utf-8", "replace")))
            continue
        try:
            rows.append(normalize_record(value, info.source))
        except RecordError as exc:
            rows.append(malformed_row(info, str(exc), line.decode("utf-8", "replace")))
    return rows_to_table(rows)


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def arrow_table(schema: pa.Schema, columns: dict[str, Any], n: int) -> pa.Table:
    """Columns (Arrow arrays, chunked or not, or Python lists; missing ones null) -> a table of `schema`."""
    arrays = []
    for f in schema:
        value = columns.get(f.name)
        if value is None:
            value = pa.nulls(n, f.type)
        elif isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        elif not isinstance(value, pa.Array):
            value = pa.array(value, f.type)
        arrays.append(value if value.type == f.type else value.cast(f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# `"created_utc":"1134000000"` -> `"created_utc":1134000000`, so one pyarrow type fits a chunk that
# mixes old (string) and new (int) rows. Cannot match inside a JSON string: quotes there are escaped.
_STRING_TIME = re.compile(rb'"(created_utc|retrieved_on)":"(-?[0-9]+)"')


def _read_json(data: bytes) -> pa.Table | None:
    for time_type in _TIME_TYPES:
        schema = pa.schema(_BASE_FIELDS + [(name, time_type) for name in _TIME_FIELDS])
        try:
            return pajson.read_json(
                pa.py_buffer(data),
                read_options=pajson.ReadOptions(block_size=max(1 << 20, len(data) + 1)),
                parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None


def parse_chunk(data: bytes, info: ChunkInfo, truncated_tail: bool = False) -> pa.Table:
    """Newline-aligned bytes -> RECORD_SCHEMA rows, one per non-blank line.

    pyarrow parses the bulk; the exact line path (orjson + normalize_record) handles only the lines
    that need it: lines that cannot be JSON objects, invalid UTF-8, rows failing the vectorized
    checks, and a truncated file's last line. Row order is not preserved (nothing downstream
    depends on it); the multiset of rows equals `parse_lines(data)`.
    """
    lines = [line for line in data.split(b"\n") if line.strip()]
    slow: list[bytes] = []
    tail = lines.pop() if truncated_tail and lines and not data.endswith(b"\n") else None
    good = []
    for line in lines:
        stripped = line.strip()
        (good if stripped[:1] == b"{" and stripped[-1:] == b"}" else slow).append(line)
    blob = b"\n".join(good)
    if not _is_utf8(blob):  # pyarrow does not check UTF-8: find the bad lines ourselves
        slow += [line for line in good if not _is_utf8(line)]
        good = [line for line in good if _is_utf8(line)]
        blob = b"\n".join(good)
    fast = None
    if good:
        has_string_time = b'created_utc":"' in blob or b'retrieved_on":"' in blob
        table = _read_json(_STRING_TIME.sub(rb'"\1":\2', blob) if has_string_time else blob)
        if table is None or table.num_rows != len(good):
            slow.extend(good)  # a line pyarrow rejects: let the exact path find and name it
        else:
            fast, bad_rows = _normalize_table(table, info)
            slow.extend(good[i] for i in bad_rows)
    if tail is not None:
        slow.append(tail)
    parts = [fast] if fast is not None and fast.num_rows else []
    if slow:
        parts.append(parse_lines(b"\n".join(slow), info, truncated_tail=tail is not None))
    return pa.concat_tables(parts) if parts else rows_to_table([])


def _normalize_table(t: pa.Table, info: ChunkInfo) -> tuple[pa.Table, list[int]]:
    """Vectorized `normalize_record` for a table from pyarrow's reader.

    Returns (normalized rows that pass every check, indices of rows that do not): those go to the
    exact path, which names their malformed reason.
    """
    n = t.num_rows
    ids = t["id"]
    parent = t["parent_id"]
    is_comment = pc.is_valid(parent)
    is_submission = pc.and_(pc.invert(is_comment), pc.is_valid(t["title"]))
    clean_ids = pc.utf8_lower(pc.replace_substring_regex(ids, r"^t[0-9]_", ""))
    created_i, created_ok = _time_to_int(t["created_utc"])
    retrieved_i, retrieved_ok = _time_to_int(t["retrieved_on"])
    link = t["link_id"]
    comment_ok = pc.and_kleene(
        pc.and_kleene(pc.is_valid(link), pc.is_valid(t["body"])),
        pc.and_kleene(pc.match_substring_regex(parent, r"^t[13]_"), pc.starts_with(link, "t3_")),
    )
    ok = pc.and_kleene(pc.is_valid(ids), pc.match_substring_regex(clean_ids, r"^[0-9a-z]+$"))
    ok = pc.and_kleene(ok, pc.and_kleene(pc.is_valid(t["score"]), pc.and_kleene(pc.is_valid(created_i), created_ok)))
    ok = pc.and_kleene(ok, retrieved_ok)
    ok = pc.and_kleene(ok, pc.or_kleene(is_submission, pc.and_kleene(is_comment, comment_ok)))
    ok = pc.fill_null(ok, False)
    if isinstance(ok, pa.ChunkedArray):
        ok = ok.combine_chunks()
    bad = pc.indices_nonzero(pc.invert(ok)).to_pylist()
    second = pc.struct_field(t["_meta"], [0])
    retrieved_i = pc.if_else(pc.is_valid(second), second, retrieved_i)
    retrieved_i = pc.if_else(pc.greater(retrieved_i, 0), retrieved_i, None)
    columns = {
        "record_kind": pc.if_else(is_comment, COMMENT, SUBMISSION),
        "id": clean_ids,
        "parent_id": pc.if_else(is_comment, parent, None),
        "link_id": pc.if_else(is_comment, link, pc.binary_join_element_wise("t3_", clean_ids, "")),
        "subreddit": pc.fill_null(t["subreddit"], ""),
        "author": pc.fill_null(t["author"], "[deleted]"),
        "text": pc.if_else(is_comment, t["body"], pc.fill_null(t["selftext"], "")),
        "title": pc.if_else(is_comment, pa.nulls(n, pa.string()), t["title"]),
        "score": t["score"],
        "created_utc": created_i,
        "retrieved_on": retrieved_i,
        "distinguished": t["distinguished"],
        "stickied": pc.fill_null(t["stickied"], False),
        "drop_reason": pa.nulls(n, pa.string()),
        "source": pa.repeat(pa.scalar(info.source, pa.string()), n),  # (pa.array([s] * n) is ~100x slower)
    }
    table = arrow_table(RECORD_SCHEMA, columns, n)
    return (table.filter(ok) if bad else table), bad


def _time_to_int(col: pa.ChunkedArray) -> tuple[Any, Any]:
    """int64 / numeric-string / float time column -> (int64 values, per-row "convertible" mask;
    a null converts to null and counts as convertible)."""
    if pa.types.is_integer(col.type) or pa.types.is_null(col.type):
        return col.cast(pa.int64()), pa.array([True] * len(col))
    if pa.types.is_floating(col.type):
        finite = pc.fill_null(pc.is_finite(col), True)
        return pc.cast(pc.floor(pc.if_else(finite, col, None)), pa.int64()), finite
    numeric = pc.fill_null(pc.match_substring_regex(col, r"^-?[0-9]+(\.[0-9]*)?$"), True)
    values = pc.cast(pc.floor(pc.cast(pc.if_else(numeric, col, None), pa.float64())), pa.int64())
    return values, numeric


# ---------------------------------------------------------------------------------------------
# Record-level filters
# ---------------------------------------------------------------------------------------------


def apply_filters(table: pa.Table, cfg: FilterConfig) -> pa.Table:
    """Set `drop_reason` on comments that fail a record-level filter (the first failing check below wins).

    Submissions are never dropped here (they are context); malformed rows keep their reason.
    """
    n = table.num_rows
    if n == 0:
        return table
    is_comment = pc.equal(table["record_kind"], COMMENT)
    body = pc.fill_null(table["text"], "")
    author = pc.fill_null(table["author"], "")
    stripped_len = pc.utf8_length(pc.utf8_trim_whitespace(body))
    checks: list[tuple[str, pa.Array]] = []
    if cfg.drop_deleted:
        checks.append(("deleted", pc.equal(body, "[deleted]")))
    if cfg.drop_removed:
        checks.append(("removed", pc.equal(body, "[removed]")))
    bot = pc.is_in(pc.utf8_lower(author), value_set=pa.array([a.lower() for a in cfg.bot_authors], pa.string()))
    for suffix in cfg.bot_author_suffixes:
        bot = pc.or_(bot, pc.ends_with(author, suffix))
    checks.append(("bot", bot))
    if cfg.drop_distinguished:
        d = pc.fill_null(table["distinguished"], "")
        checks.append(("distinguished", pc.not_equal(d, "")))
    if cfg.drop_stickied:
        checks.append(("stickied", pc.fill_null(table["stickied"], False)))
    checks.append(("empty", pc.less(stripped_len, max(cfg.min_chars, 1))))
    checks.append(("too_long", pc.greater(pc.utf8_length(body), cfg.max_chars)))
    if cfg.min_settle_seconds > 0:
        settle = pc.subtract(table["retrieved_on"], table["created_utc"])
        checks.append(("unsettled_score", pc.fill_null(pc.less(settle, cfg.min_settle_seconds), False)))
    reason = pa.nulls(n, pa.string())
    for name, mask in reversed(checks):  # reversed: the first check in order wins
        reason = pc.if_else(pc.and_(is_comment, mask), name, reason)
    reason = pc.coalesce(table["drop_reason"], reason)
    return table.set_column(table.schema.get_field_index("drop_reason"), "drop_reason", reason)


def parse_and_filter(data: bytes, info: ChunkInfo, cfg: FilterConfig, truncated_tail: bool = False) -> pa.Table:
    return apply_filters(parse_chunk(data, info, truncated_tail=truncated_tail), cfg)
