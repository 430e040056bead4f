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
from typing import Any, Iterable

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

# Record-level drop reasons (comments only), in the order they are checked: the first that
# applies is the one counted.
DROP_REASONS = (
    "deleted",
    "removed",
    "bot",
    "distinguished",
    "stickied",
    "empty",
    "too_long",
    "unsettled_score",
)

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
    if isinstance(value, bool) or value is None:
        raise RecordError(f"bad_type:{field}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value:  # NaN
            raise RecordError(f"bad_type:{field}")
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value)) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise RecordError(f"bad_type:{field}") from None
    raise RecordError(f"bad_type:{field}")


def strip_prefix(fullname: str) -> str:
    """'t1_abc' -> 'abc'; an id without prefix is returned unchanged."""
    return fullname[3:] if len(fullname) > 3 and fullname[0] == "t" and fullname[2] == "_" else fullname


def _require_str(record: dict, field: str) -> str:
    value = record.get(field)
    if value is None:
        raise RecordError(f"missing_field:{field}")
    if not isinstance(value, str):
        raise RecordError(f"bad_type:{field}")
    return value


def _optional_str(record: dict, field: str) -> str | None:
    value = record.get(field)
    if value is None or isinstance(value, str):
        return value
    raise RecordError(f"bad_type:{field}")


def normalize_record(record: Any, source: str) -> dict:
    """One parsed JSON value -> a dict of RECORD_SCHEMA fields (drop_reason left None).

    Raises RecordError(reason) for anything that cannot be a comment or submission.
    """
    if not isinstance(record, dict):
        raise RecordError("not_an_object")
    rid = _require_str(record, "id")
    rid = strip_prefix(rid).lower()
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
    kind = MALFORMED_SUBMISSION if info.kind_hint == SUBMISSION else MALFORMED_COMMENT
    return {
        "record_kind": kind,
        "id": None,
        "parent_id": None,
        "link_id": f"{MALFORMED_LINK_PREFIX}{info.source}#{info.chunk_index}",
        "subreddit": None,
        "author": None,
        "text": snippet[:SNIPPET_CHARS],
        "title": None,
        "score": None,
        "created_utc": None,
        "retrieved_on": None,
        "distinguished": None,
        "stickied": None,
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
            try:
                line.decode("utf-8")
                # The last line of a file that ended early was cut off mid-record.
                reason = "truncated_line" if truncated_tail and i == last else "bad_json"
            except UnicodeDecodeError:
                reason = "invalid_utf8"
            rows.append(malformed_row(info, reason, line.decode("utf-8", "replace")))
            continue
        try:
            rows.append(normalize_record(value, info.source))
        except RecordError as exc:
            rows.append(malformed_row(info, str(exc), line.decode("utf-8", "replace")))
    return rows_to_table(rows)


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def _fast_schema(time_type: pa.DataType) -> pa.Schema:
    return pa.schema(_BASE_FIELDS + [(name, time_type) for name in _TIME_FIELDS])


def parse_chunk_fast(data: bytes, info: ChunkInfo) -> pa.Table | None:
    """pyarrow's JSON reader over the whole chunk; None when it cannot be used (then parse_lines).

    Returns None rather than guessing whenever anything is off: invalid UTF-8 (pyarrow does not
    check it), a line pyarrow rejects, a type it cannot read, or a row that would fail
    `normalize_record`'s checks.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    table = None
    for time_type in _TIME_TYPES:
        try:
            table = pajson.read_json(
                pa.py_buffer(data),
                read_options=pajson.ReadOptions(block_size=max(1 << 20, len(data) + 1)),
                parse_options=pajson.ParseOptions(
                    explicit_schema=_fast_schema(time_type), unexpected_field_behavior="ignore"
                ),
            )
            break
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    if table is None:
        return None
    return _normalize_table(table, info)


def _normalize_table(t: pa.Table, info: ChunkInfo) -> pa.Table | None:
    """Vectorized `normalize_record` for a table from pyarrow's reader; None if any row needs the slow path."""
    n = t.num_rows
    ids = t["id"]
    parent = t["parent_id"]
    is_comment = pc.is_valid(parent)
    is_submission = pc.and_(pc.invert(is_comment), pc.is_valid(t["title"]))
    # Rows the slow path would call malformed: missing id/score/created_utc, comments without
    # link_id/body, neither kind, odd ids or prefixes. Let the slow path name the reason.
    created = t["created_utc"]
    ok = pc.and_(pc.is_valid(ids), pc.and_(pc.is_valid(t["score"]), pc.is_valid(created)))
    ok = pc.and_(ok, pc.or_(is_submission, pc.and_(is_comment, pc.and_(pc.is_valid(t["link_id"]), pc.is_valid(t["body"])))))
    ok = pc.and_(ok, pc.or_(is_comment, is_submission))
    if not _all_true(ok):
        return None
    clean_ids = pc.utf8_lower(pc.replace_substring_regex(ids, r"^t[0-9]_", ""))
    if not _all_true(pc.match_substring_regex(clean_ids, r"^[0-9a-z]+$")):
        return None
    comment_parent = pc.if_else(is_comment, parent, None)
    if not _all_true(pc.or_kleene(pc.invert(is_comment), pc.match_substring_regex(comment_parent, r"^t[13]_"))):
        return None
    link = t["link_id"]
    if not _all_true(pc.or_kleene(pc.invert(is_comment), pc.starts_with(link, "t3_"))):
        return None
    created_i = _time_to_int(created)
    if created_i is None:
        return None
    retrieved_i = _time_to_int(t["retrieved_on"])
    if retrieved_i is None:
        return None
    meta = t["_meta"]
    second = pc.struct_field(meta, [0])
    retrieved_i = pc.if_else(pc.is_valid(second), second, retrieved_i)
    retrieved_i = pc.if_else(pc.greater(retrieved_i, 0), retrieved_i, None)
    kind = pc.if_else(is_comment, COMMENT, SUBMISSION)
    link_out = pc.if_else(is_comment, link, pc.binary_join_element_wise("t3_", clean_ids, ""))
    text = pc.if_else(is_comment, t["body"], pc.fill_null(t["selftext"], ""))
    title = pc.if_else(is_comment, pa.nulls(n, pa.string()), t["title"])
    columns = {
        "record_kind": kind,
        "id": clean_ids,
        "parent_id": comment_parent,
        "link_id": link_out,
        "subreddit": pc.fill_null(t["subreddit"], ""),
        "author": pc.fill_null(t["author"], "[deleted]"),
        "text": text,
        "title": title,
        "score": t["score"],
        "created_utc": created_i,
        "retrieved_on": retrieved_i,
        "distinguished": t["distinguished"],
        "stickied": pc.fill_null(t["stickied"], False),
        "drop_reason": pa.nulls(n, pa.string()),
        "source": pa.array([info.source] * n, pa.string()),
    }
    return pa.table({k: _as_array(v, RECORD_SCHEMA.field(k).type) for k, v in columns.items()}, schema=RECORD_SCHEMA)


def _all_true(mask: pa.Array | pa.ChunkedArray) -> bool:
    """True iff every value is true (a null counts as false; an empty column is all true)."""
    return len(mask) == 0 or pc.all(pc.fill_null(mask, False)).as_py() is True


def _as_array(value: Any, tp: pa.DataType) -> pa.Array:
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    return value.cast(tp) if value.type != tp else value


def _time_to_int(col: pa.ChunkedArray) -> pa.Array | None:
    """int64 / numeric-string / float time column -> int64; None if some value cannot convert."""
    if pa.types.is_integer(col.type):
        return col
    if pa.types.is_floating(col.type):
        if not _all_true(pc.is_finite(pc.fill_null(col, 0.0))):
            return None
        return pc.cast(pc.floor(col), pa.int64())
    try:
        if pc.any(pc.match_substring_regex(pc.fill_null(col, "0"), r"[.eE]")).as_py():
            return pc.cast(pc.floor(pc.cast(col, pa.float64())), pa.int64())
        return pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def parse_chunk(data: bytes, info: ChunkInfo, truncated_tail: bool = False) -> pa.Table:
    """Newline-aligned bytes -> RECORD_SCHEMA rows, one per non-blank line (fast path when possible)."""
    fast = parse_chunk_fast(data, info)
    if fast is not None:
        return fast
    return parse_lines(data, info, truncated_tail=truncated_tail)


# ---------------------------------------------------------------------------------------------
# Record-level filters
# ---------------------------------------------------------------------------------------------


def apply_filters(table: pa.Table, cfg: FilterConfig) -> pa.Table:
    """Set `drop_reason` on comments that fail a record-level filter (first reason in DROP_REASONS wins).

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
    checks.append(("bot", _is_bot(author, cfg)))
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


def _is_bot(author: pa.Array, cfg: FilterConfig) -> pa.Array:
    lowered = pc.utf8_lower(author)
    mask = pc.is_in(lowered, value_set=pa.array([a.lower() for a in cfg.bot_authors], pa.string()))
    for suffix in cfg.bot_author_suffixes:
        mask = pc.or_(mask, pc.ends_with(author, suffix))
    return mask


def parse_and_filter(data: bytes, info: ChunkInfo, cfg: FilterConfig, truncated_tail: bool = False) -> pa.Table:
    return apply_filters(parse_chunk(data, info, truncated_tail=truncated_tail), cfg)


def count_records(tables: Iterable[pa.Table]) -> dict[str, int]:
    """record_kind -> rows, over tables (for tests and summaries)."""
    out: dict[str, int] = {}
    for t in tables:
        for kind, n in zip(*_value_counts(t["record_kind"])):
            out[kind] = out.get(kind, 0) + n
    return out


def _value_counts(col: pa.ChunkedArray) -> tuple[list, list]:
    vc = pc.value_counts(col)
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()
