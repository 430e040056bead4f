"""Threads -> examples, sibling pairs and the ledger (pure; no Ray).

`build_block(records, cfg)` takes RECORD_SCHEMA rows holding WHOLE threads (the Ray Data pipeline
hash-partitions by link_id first) and returns one table of STAGE_SCHEMA rows, each tagged by
`output`:

- "example": a kept comment with its context (submission title + selftext, then up to K ancestor
  comments, oldest first, each tagged OP or user), its karma labels and its metadata features;
- "pair": two kept sibling replies, the preferred one first (labels.prefers);
- "ledger": every input record that did NOT become an example, with its outcome (a drop reason,
  a malformed reason, `duplicate`, or `submission`), plus one row per thread (record_kind
  "thread") that carries the thread's counts (comments, dangling parents, examples, pairs).

So every input record is accounted for exactly once: as an example row or as a ledger row.
Dropped comments still serve as context for their replies (what the readers saw).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from karma_ray.config import PrepareConfig
from karma_ray.data.format import OP_ROLE, USER_ROLE, render_context, truncate
from karma_ray.data.labels import percentile_ranks, prefers, signed_log1p, split_for_thread
from karma_ray.data.records import COMMENT, MALFORMED_LINK_PREFIX, SUBMISSION

# Pairs are searched among at most this many siblings per parent (the earliest by time): the
# search is quadratic and a few megathreads would otherwise dominate the run.
MAX_PAIR_CANDIDATES = 200

EXAMPLE_FIELDS = [
    ("id", pa.string()),
    ("name", pa.string()),  # fullname t1_<id>
    ("link_id", pa.string()),
    ("parent_id", pa.string()),
    ("subreddit", pa.string()),
    ("author", pa.string()),
    ("split", pa.string()),
    ("context", pa.string()),
    ("reply", pa.string()),
    ("context_depth", pa.int32()),  # ancestor comments in `context`
    ("depth", pa.int32()),  # comment ancestors known to exist (0 = top-level reply)
    ("chain_complete", pa.bool_()),  # False when an ancestor is missing from the corpus
    ("submission_found", pa.bool_()),
    ("reply_is_op", pa.bool_()),
    # labels
    ("score", pa.int64()),
    ("log_score", pa.float64()),
    ("sibling_percentile", pa.float64()),
    ("thread_percentile", pa.float64()),
    # metadata features (for "with metadata" reward models)
    ("created_utc", pa.int64()),
    ("hour", pa.int32()),
    ("weekday", pa.int32()),  # Monday = 0
    ("seconds_since_parent", pa.int64()),  # null when the parent is not in the corpus
    ("seconds_since_submission", pa.int64()),
    ("parent_score", pa.int64()),
    ("num_siblings", pa.int32()),  # other replies to the same parent (dropped ones too: readers saw them)
    ("sibling_rank_by_time", pa.int32()),  # 0 = first reply to its parent
    ("thread_comments", pa.int32()),
]
PAIR_FIELDS = [
    ("pair_id", pa.string()),
    ("chosen_id", pa.string()),
    ("rejected_id", pa.string()),
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("chosen_score", pa.int64()),
    ("rejected_score", pa.int64()),
    ("chosen_created_utc", pa.int64()),
    ("rejected_created_utc", pa.int64()),
]
LEDGER_FIELDS = [
    ("record_kind", pa.string()),
    ("outcome", pa.string()),
    ("source", pa.string()),
    ("detail", pa.string()),
    ("n_comments", pa.int64()),
    ("n_dangling", pa.int64()),
    ("n_examples", pa.int64()),
    ("n_pairs", pa.int64()),
]


def _union(*field_lists: list[tuple[str, pa.DataType]]) -> pa.Schema:
    seen: dict[str, pa.DataType] = {}
    for fields in field_lists:
        for name, tp in fields:
            if name in seen and seen[name] != tp:
                raise TypeError(f"field {name} has two types")
            seen.setdefault(name, tp)
    return pa.schema([("output", pa.string())] + list(seen.items()))


EXAMPLE_SCHEMA = pa.schema(EXAMPLE_FIELDS)
# A pair carries the shared thread columns too.
PAIR_SCHEMA = pa.schema(
    [(n, t) for n, t in EXAMPLE_FIELDS if n in ("link_id", "parent_id", "subreddit", "split", "context", "context_depth")]
    + PAIR_FIELDS
)
LEDGER_SCHEMA = pa.schema(
    [("id", pa.string()), ("link_id", pa.string()), ("subreddit", pa.string()), ("split", pa.string())] + LEDGER_FIELDS
)
STAGE_SCHEMA = _union(EXAMPLE_FIELDS, PAIR_FIELDS, list(zip(LEDGER_SCHEMA.names, LEDGER_SCHEMA.types)))


class _Rows:
    """Column-wise accumulator for STAGE_SCHEMA rows (much cheaper than a list of dicts)."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in STAGE_SCHEMA.names}
        self.n = 0

    def add(self, output: str, values: dict[str, Any]) -> None:
        values["output"] = output
        for name, col in self.columns.items():
            col.append(values.get(name))
        self.n += 1

    def table(self) -> pa.Table:
        return pa.table({k: pa.array(v, STAGE_SCHEMA.field(k).type) for k, v in self.columns.items()}, schema=STAGE_SCHEMA)


def build_block(records: pa.Table, cfg: PrepareConfig) -> pa.Table:
    """RECORD_SCHEMA rows of whole threads -> STAGE_SCHEMA rows (examples, pairs, ledger)."""
    out = _Rows()
    if records.num_rows == 0:
        return out.table()
    records = records.sort_by([("link_id", "ascending")])
    cols = {name: records[name].to_pylist() for name in records.column_names}
    links = cols["link_id"]
    start = 0
    n = len(links)
    while start < n:
        end = start
        while end + 1 < n and links[end + 1] == links[start]:
            end += 1
        rows = range(start, end + 1)
        if links[start].startswith(MALFORMED_LINK_PREFIX):
            for i in rows:
                out.add("ledger", _ledger(cols, i, cols["drop_reason"][i], None))
        else:
            _build_thread(cols, list(rows), cfg, out)
        start = end + 1
    return out.table()


def _ledger(cols: dict, i: int, outcome: str, split: str | None) -> dict:
    return {
        "record_kind": cols["record_kind"][i],
        "id": cols["id"][i],
        "link_id": cols["link_id"][i],
        "subreddit": cols["subreddit"][i],
        "split": split or "none",
        "outcome": outcome,
        "source": cols["source"][i],
        "detail": cols["text"][i] if cols["record_kind"][i].startswith("malformed") else None,
    }


def _dedup(cols: dict, rows: list[int], out: _Rows, split: str) -> list[int]:
    """Keep one row per id: the latest retrieval (its score had the longest to settle)."""
    best: dict[str, int] = {}
    for i in rows:
        rid = cols["id"][i]
        j = best.get(rid)
        if j is None:
            best[rid] = i
            continue
        ri, rj = cols["retrieved_on"][i] or -1, cols["retrieved_on"][j] or -1
        loser = j if ri > rj else i
        if ri > rj:
            best[rid] = i
        out.add("ledger", _ledger(cols, loser, "duplicate", split))
    return sorted(best.values())


def _build_thread(cols: dict, rows: list[int], cfg: PrepareConfig, out: _Rows) -> None:
    link_id = cols["link_id"][rows[0]]
    split = split_for_thread(link_id, cfg.split)
    kinds = cols["record_kind"]
    comments = _dedup(cols, [i for i in rows if kinds[i] == COMMENT], out, split)
    submissions = _dedup(cols, [i for i in rows if kinds[i] == SUBMISSION], out, split)
    sub = submissions[0] if submissions else None
    for i in submissions:
        out.add("ledger", _ledger(cols, i, "submission", split))

    ids, parents, texts, authors = cols["id"], cols["parent_id"], cols["text"], cols["author"]
    created, scores, drop = cols["created_utc"], cols["score"], cols["drop_reason"]
    by_fullname = {"t1_" + ids[i]: i for i in comments}
    op_author = authors[sub] if sub is not None else None
    if op_author == "[deleted]":
        op_author = None

    # Depth and chain completeness, memoized along parent links (iterative: threads can be deep).
    depth: dict[int, int] = {}
    complete: dict[int, bool] = {}
    dangling = 0
    for i in comments:
        if parents[i].startswith("t1_") and parents[i] not in by_fullname:
            dangling += 1
        stack = [i]
        while stack:
            k = stack[-1]
            p = parents[k]
            if not p.startswith("t1_"):
                depth[k], complete[k] = 0, True
                stack.pop()
                continue
            j = by_fullname.get(p)
            if j is None:
                depth[k], complete[k] = 1, False
                stack.pop()
            elif j in depth:
                depth[k], complete[k] = depth[j] + 1, complete[j]
                stack.pop()
            elif j in stack:  # a parent cycle (corrupt data): cut it here
                depth[k], complete[k] = 0, False
                stack.pop()
            else:
                stack.append(j)

    siblings: dict[str, list[int]] = defaultdict(list)
    for i in comments:
        siblings[parents[i]].append(i)
    rank_by_time: dict[int, int] = {}
    for group in siblings.values():
        group.sort(key=lambda i: (created[i], ids[i]))
        for r, i in enumerate(group):
            rank_by_time[i] = r

    kept = [i for i in comments if drop[i] is None]
    for i in comments:
        if drop[i] is not None:
            out.add("ledger", _ledger(cols, i, drop[i], split))

    thread_pct = dict(zip(kept, percentile_ranks([scores[i] for i in kept]))) if kept else {}
    kept_siblings: dict[str, list[int]] = defaultdict(list)
    for i in kept:
        kept_siblings[parents[i]].append(i)
    sibling_pct: dict[int, float] = {}
    for group in kept_siblings.values():
        sibling_pct.update(zip(group, percentile_ranks([scores[i] for i in group])))

    title = cols["title"][sub] if sub is not None and cfg.threads.include_submission else None
    selftext = None
    if sub is not None and cfg.threads.include_submission:
        selftext = truncate(texts[sub], cfg.threads.max_submission_chars)
    context_cache: dict[str, tuple[str, int]] = {}

    def role(author: str) -> str:
        return OP_ROLE if op_author is not None and author == op_author else USER_ROLE

    def context_for(parent: str) -> tuple[str, int]:
        """Rendered context of a reply to `parent` (shared by all its siblings) and its turn count."""
        if parent in context_cache:
            return context_cache[parent]
        turns: list[tuple[str, str]] = []
        j = by_fullname.get(parent)
        while j is not None and len(turns) < cfg.threads.max_context_turns:
            turns.append((role(authors[j]), texts[j]))
            j = by_fullname.get(parents[j])
        turns.reverse()
        result = (render_context(title, selftext, turns, cfg.threads.max_context_chars), len(turns))
        context_cache[parent] = result
        return result

    n_examples = 0
    for i in kept:
        parent = parents[i]
        context, context_depth = context_for(parent)
        j = by_fullname.get(parent)
        if j is not None:
            parent_created, parent_score = created[j], scores[j]
        elif parent.startswith("t3_") and sub is not None:
            parent_created, parent_score = created[sub], scores[sub]
        else:
            parent_created, parent_score = None, None
        when = datetime.fromtimestamp(created[i], tz=timezone.utc)
        out.add(
            "example",
            {
                "id": ids[i],
                "name": "t1_" + ids[i],
                "link_id": link_id,
                "parent_id": parent,
                "subreddit": cols["subreddit"][i],
                "author": authors[i],
                "split": split,
                "context": context,
                "reply": texts[i],
                "context_depth": context_depth,
                "depth": depth[i],
                "chain_complete": complete[i],
                "submission_found": sub is not None,
                "reply_is_op": role(authors[i]) == OP_ROLE,
                "score": scores[i],
                "log_score": signed_log1p(scores[i]),
                "sibling_percentile": sibling_pct[i],
                "thread_percentile": thread_pct[i],
                "created_utc": created[i],
                "hour": when.hour,
                "weekday": when.weekday(),
                "seconds_since_parent": created[i] - parent_created if parent_created is not None else None,
                "seconds_since_submission": created[i] - created[sub] if sub is not None else None,
                "parent_score": parent_score,
                "num_siblings": len(siblings[parent]) - 1,
                "sibling_rank_by_time": rank_by_time[i],
                "thread_comments": len(comments),
            },
        )
        n_examples += 1

    n_pairs = 0
    if cfg.pairs.enabled:
        for parent, group in kept_siblings.items():
            n_pairs += _pairs_for(parent, group, cols, cfg, context_for(parent), link_id, split, out)

    out.add(
        "ledger",
        {
            "record_kind": "thread",
            "id": link_id[3:],
            "link_id": link_id,
            "subreddit": cols["subreddit"][sub] if sub is not None else (cols["subreddit"][comments[0]] if comments else None),
            "split": split,
            "outcome": "thread" if sub is not None else "thread_without_submission",
            "n_comments": len(comments),
            "n_dangling": dangling,
            "n_examples": n_examples,
            "n_pairs": n_pairs,
        },
    )


def _pairs_for(
    parent: str,
    group: list[int],
    cols: dict,
    cfg: PrepareConfig,
    context: tuple[str, int],
    link_id: str,
    split: str,
    out: _Rows,
) -> int:
    if len(group) < 2:
        return 0
    ids, scores, created, texts = cols["id"], cols["score"], cols["created_utc"], cols["text"]
    candidates = sorted(group, key=lambda i: (created[i], ids[i]))[:MAX_PAIR_CANDIDATES]
    found = []
    for a in candidates:
        for b in candidates:
            if a != b and prefers(scores[a], created[a], scores[b], created[b], cfg.pairs):
                found.append((scores[a] - scores[b], ids[a], ids[b], a, b))
    # Largest score gaps first (the clearest preferences); ids break ties deterministically.
    found.sort(key=lambda f: (-f[0], f[1], f[2]))
    for _, _, _, a, b in found[: cfg.pairs.max_pairs_per_parent]:
        out.add(
            "pair",
            {
                "pair_id": f"{ids[a]}>{ids[b]}",
                "link_id": link_id,
                "parent_id": parent,
                "subreddit": cols["subreddit"][a],
                "split": split,
                "context": context[0],
                "context_depth": context[1],
                "chosen_id": ids[a],
                "rejected_id": ids[b],
                "chosen": texts[a],
                "rejected": texts[b],
                "chosen_score": scores[a],
                "rejected_score": scores[b],
                "chosen_created_utc": created[a],
                "rejected_created_utc": created[b],
            },
        )
    return min(len(found), cfg.pairs.max_pairs_per_parent)


def select_output(stage: pa.Table, output: str) -> pa.Table:
    """The rows of one output kind, with only that kind's columns."""
    schema = {"example": EXAMPLE_SCHEMA, "pair": PAIR_SCHEMA, "ledger": LEDGER_SCHEMA}[output]
    rows = stage.filter(pc.equal(stage["output"], output))
    return rows.select(schema.names)
