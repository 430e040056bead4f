"""Threads -> examples, sibling pairs and the ledger (pure; no Ray).

`build_block(records, cfg)` takes RECORD_SCHEMA rows holding WHOLE threads (the pipeline groups
records by link_id first) and returns `BuiltRows`, one table per output kind in its own schema:

- examples (EXAMPLE_SCHEMA, one table per split): a kept comment with its context (submission
  title + selftext, then up to K ancestor comments, oldest first, each tagged OP or user), its
  karma labels and its metadata features;
- pairs (PAIR_SCHEMA, per split): two kept sibling replies, the preferred one first (labels.prefers);
- ledger (LEDGER_SCHEMA): every input record that did NOT become an example, with its outcome (a
  drop reason, a malformed reason, `duplicate`, or `submission`), plus one row per thread
  (record_kind "thread") that carries the thread's counts (comments, dangling parents, examples, pairs).

So every input record is accounted for exactly once: as an example row or as a ledger row.
Dropped comments still serve as context for their replies (what the readers saw).
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from karma_ray.config import PrepareConfig
from karma_ray.data.format import OP_ROLE, USER_ROLE, render_context, truncate
from karma_ray.data.labels import percentile_ranks, prefers, split_for_thread
from karma_ray.data.records import COMMENT, MALFORMED_LINK_PREFIX, SUBMISSION, arrow_table

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


EXAMPLE_SCHEMA = pa.schema(EXAMPLE_FIELDS)
# A pair carries the shared thread columns too.
PAIR_SCHEMA = pa.schema(
    [(n, t) for n, t in EXAMPLE_FIELDS if n in ("link_id", "parent_id", "subreddit", "split", "context", "context_depth")]
    + PAIR_FIELDS
)
LEDGER_SCHEMA = pa.schema(
    [("id", pa.string()), ("link_id", pa.string()), ("subreddit", pa.string()), ("split", pa.string())] + LEDGER_FIELDS
)


@dataclass
class BuiltRows:
    """build_block's output. Built per split, so writing examples and pairs by split copies nothing."""

    examples: dict[str, pa.Table]  # split -> EXAMPLE_SCHEMA rows
    pairs: dict[str, pa.Table]  # split -> PAIR_SCHEMA rows
    ledger: pa.Table  # LEDGER_SCHEMA rows

    def table(self, kind: str) -> pa.Table:
        """All rows of one kind ('example', 'pair' or 'ledger') in one table."""
        if kind == "ledger":
            return self.ledger
        parts, schema = (self.examples, EXAMPLE_SCHEMA) if kind == "example" else (self.pairs, PAIR_SCHEMA)
        return pa.concat_tables(parts.values()) if parts else schema.empty_table()


# example column <- record column, copied by index
_EXAMPLE_TAKEN = {
    "id": "id",
    "link_id": "link_id",
    "parent_id": "parent_id",
    "subreddit": "subreddit",
    "author": "author",
    "reply": "text",
    "score": "score",
    "created_utc": "created_utc",
}
# Example columns computed per thread, in EXAMPLE_FIELDS order (the order of the values `_build_thread`
# passes): all but those taken from the record table and those computed vectorized in `_Rows._examples`.
_EXAMPLE_COMPUTED = tuple(
    n for n, _ in EXAMPLE_FIELDS if n not in _EXAMPLE_TAKEN and n not in ("name", "log_score", "hour", "weekday")
)


class _Rows:
    """Output rows of one block, kept as record indices plus the values computed per thread, per split.

    Columns that are copies of record columns (ids, texts, scores, times) are produced by one
    Arrow `take` per column, and row-wise derivable ones (name, log_score, hour, weekday) by
    vectorized compute, so no Python string crosses back into Arrow twice.
    """

    def __init__(self, records: pa.Table) -> None:
        self.records = records
        # split -> (record indices, values in _EXAMPLE_COMPUTED order)
        self.example_rows: dict[str, tuple[list[int], list[tuple]]] = {}
        # split -> ((chosen, rejected) record indices, (parent_id, split, context, context_depth))
        self.pair_rows: dict[str, tuple[list[tuple[int, int]], list[tuple]]] = {}
        self.ledger_index: list[int] = []  # records that did not become examples
        self.ledger_values: list[tuple] = []  # (outcome, split)
        self.thread_rows: list[dict] = []  # per-thread ledger rows (no record behind them)

    def example(self, i: int, values: tuple) -> None:
        index, computed = self.example_rows.setdefault(values[0], ([], []))  # values[0]: the split
        index.append(i)
        computed.append(values)

    def pair(self, a: int, b: int, values: tuple) -> None:
        index, computed = self.pair_rows.setdefault(values[1], ([], []))  # values[1]: the split
        index.append((a, b))
        computed.append(values)

    def ledger(self, i: int, outcome: str, split: str | None) -> None:
        self.ledger_index.append(i)
        self.ledger_values.append((outcome, split or "none"))

    def built(self) -> BuiltRows:
        return BuiltRows(
            examples={split: self._examples(*rows) for split, rows in self.example_rows.items()},
            pairs={split: self._pairs(*rows) for split, rows in self.pair_rows.items()},
            ledger=self._ledger(),
        )

    def _take(self, index: list[int], column: str) -> pa.Array:
        return self.records[column].take(pa.array(index, pa.int64())).combine_chunks()

    def _examples(self, index: list[int], computed: list[tuple]) -> pa.Table:
        columns: dict[str, Any] = {out: self._take(index, src) for out, src in _EXAMPLE_TAKEN.items()}
        columns.update(zip(_EXAMPLE_COMPUTED, map(list, zip(*computed))))
        score = pc.cast(columns["score"], pa.float64())
        created = columns["created_utc"]
        columns["name"] = pc.binary_join_element_wise("t1_", columns["id"], "")
        columns["log_score"] = pc.multiply(pc.sign(score), pc.log1p(pc.abs(score)))  # sign(s) * log(1 + |s|)
        # 1970-01-01 was a Thursday (weekday 3 with Monday = 0); floor division for dates before 1970
        days = pc.floor(pc.divide(pc.cast(created, pa.float64()), 86400.0))
        columns["weekday"] = pc.cast(pc.subtract(pc.add(days, 3.0), pc.multiply(pc.floor(pc.divide(pc.add(days, 3.0), 7.0)), 7.0)), pa.int32())
        seconds_in_day = pc.subtract(pc.cast(created, pa.float64()), pc.multiply(days, 86400.0))
        columns["hour"] = pc.cast(pc.floor(pc.divide(seconds_in_day, 3600.0)), pa.int32())
        return arrow_table(EXAMPLE_SCHEMA, columns, len(index))

    def _pairs(self, index: list[tuple[int, int]], computed: list[tuple]) -> pa.Table:
        chosen, rejected = map(list, zip(*index))
        parent, split, context, context_depth = map(list, zip(*computed))
        chosen_id, rejected_id = self._take(chosen, "id"), self._take(rejected, "id")
        columns = {
            "pair_id": pc.binary_join_element_wise(chosen_id, rejected_id, ">"),
            "link_id": self._take(chosen, "link_id"),
            "parent_id": parent,
            "subreddit": self._take(chosen, "subreddit"),
            "split": split,
            "context": context,
            "context_depth": context_depth,
            "chosen_id": chosen_id,
            "rejected_id": rejected_id,
            "chosen": self._take(chosen, "text"),
            "rejected": self._take(rejected, "text"),
            "chosen_score": self._take(chosen, "score"),
            "rejected_score": self._take(rejected, "score"),
            "chosen_created_utc": self._take(chosen, "created_utc"),
            "rejected_created_utc": self._take(rejected, "created_utc"),
        }
        return arrow_table(PAIR_SCHEMA, columns, len(index))

    def _ledger(self) -> pa.Table:
        parts = []
        n = len(self.ledger_index)
        if n:
            kind = self._take(self.ledger_index, "record_kind")
            outcome, split = map(list, zip(*self.ledger_values))
            malformed = pc.starts_with(kind, "malformed")
            detail = pc.if_else(malformed, self._take(self.ledger_index, "text"), pa.nulls(n, pa.string()))
            columns = {c: self._take(self.ledger_index, c) for c in ("id", "link_id", "subreddit", "source")}
            columns.update(record_kind=kind, split=split, outcome=outcome, detail=detail)
            parts.append(arrow_table(LEDGER_SCHEMA, columns, n))
        parts.append(pa.Table.from_pylist(self.thread_rows, schema=LEDGER_SCHEMA))
        return pa.concat_tables(parts)


# Record columns the per-thread logic reads as Python values (texts only for contexts).
_LOGIC_COLUMNS = ("record_kind", "id", "parent_id", "link_id", "subreddit", "author", "text", "title", "score", "created_utc", "retrieved_on", "drop_reason")


def build_block(records: pa.Table, cfg: PrepareConfig) -> BuiltRows:
    """RECORD_SCHEMA rows of whole threads -> their examples, pairs and ledger rows."""
    if records.num_rows == 0:
        return BuiltRows({}, {}, LEDGER_SCHEMA.empty_table())
    records = records.sort_by([("link_id", "ascending")])
    out = _Rows(records)
    cols = {name: records[name].to_pylist() for name in _LOGIC_COLUMNS}
    for link, thread in itertools.groupby(range(records.num_rows), key=cols["link_id"].__getitem__):
        rows = list(thread)
        if link.startswith(MALFORMED_LINK_PREFIX):
            for i in rows:
                out.ledger(i, cols["drop_reason"][i], None)
        else:
            _build_thread(cols, rows, cfg, out)
    return out.built()


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
        best[rid], loser = (i, j) if ri > rj else (j, i)
        out.ledger(loser, "duplicate", split)
    return sorted(best.values())


def _build_thread(cols: dict, rows: list[int], cfg: PrepareConfig, out: _Rows) -> None:
    link_id = cols["link_id"][rows[0]]
    split = split_for_thread(link_id, cfg.split)
    kinds = cols["record_kind"]
    comments = _dedup(cols, [i for i in rows if kinds[i] == COMMENT], out, split)
    submissions = _dedup(cols, [i for i in rows if kinds[i] == SUBMISSION], out, split)
    sub = submissions[0] if submissions else None
    for i in submissions:
        out.ledger(i, "submission", split)

    ids, parents, texts, authors = cols["id"], cols["parent_id"], cols["text"], cols["author"]
    created, scores, drop = cols["created_utc"], cols["score"], cols["drop_reason"]
    by_fullname = {"t1_" + ids[i]: i for i in comments}
    op_author = authors[sub] if sub is not None else None
    if op_author == "[deleted]":
        op_author = None

    # Depth and chain completeness, memoized along parent links (iterative: threads can be deep).
    depth: dict[int, int] = {}
    complete: dict[int, bool] = {}
    for i in comments:
        if i in depth:
            continue
        stack = [i]
        while stack:
            k = stack[-1]
            j = by_fullname.get(parents[k])
            if j is not None and j not in depth and j not in stack:
                stack.append(j)  # the parent first
                continue
            stack.pop()
            if not parents[k].startswith("t1_"):
                depth[k], complete[k] = 0, True
            elif j is None:
                depth[k], complete[k] = 1, False
            elif j in depth:
                depth[k], complete[k] = depth[j] + 1, complete[j]
            else:  # j is on the stack: a parent cycle (corrupt data), cut here
                depth[k], complete[k] = 0, False
    dangling = sum(1 for i in comments if parents[i].startswith("t1_") and parents[i] not in by_fullname)

    siblings: dict[str, list[int]] = defaultdict(list)
    for i in comments:
        siblings[parents[i]].append(i)
    rank_by_time: dict[int, int] = {}
    for group in siblings.values():
        rank_by_time.update((i, r) for r, i in enumerate(sorted(group, key=lambda i: (created[i], ids[i]))))

    kept = [i for i in comments if drop[i] is None]
    for i in comments:
        if drop[i] is not None:
            out.ledger(i, drop[i], split)

    thread_pct = dict(zip(kept, percentile_ranks([scores[i] for i in kept])))
    kept_siblings: dict[str, list[int]] = defaultdict(list)
    for i in kept:
        kept_siblings[parents[i]].append(i)
    sibling_pct: dict[int, float] = {}
    for group in kept_siblings.values():
        sibling_pct.update(zip(group, percentile_ranks([scores[i] for i in group])))

    include_sub = sub is not None and cfg.threads.include_submission
    title = cols["title"][sub] if include_sub else None
    selftext = truncate(texts[sub], cfg.threads.max_submission_chars) if include_sub else None
    max_turns, max_chars = cfg.threads.max_context_turns, cfg.threads.max_context_chars

    @functools.cache
    def context_for(parent: str) -> tuple[str, int]:
        """Rendered context of a reply to `parent` (shared by all its siblings) and its turn count."""
        turns: list[tuple[str, str]] = []
        j = by_fullname.get(parent)
        while j is not None and len(turns) < max_turns:
            turns.append((OP_ROLE if op_author is not None and authors[j] == op_author else USER_ROLE, texts[j]))
            j = by_fullname.get(parents[j])
        turns.reverse()
        return render_context(title, selftext, turns, max_chars), len(turns)

    n_comments = len(comments)
    sub_created, sub_score = (created[sub], scores[sub]) if sub is not None else (None, None)
    for i in kept:
        parent = parents[i]
        context, context_depth = context_for(parent)
        j = by_fullname.get(parent)
        if j is not None:
            parent_created, parent_score = created[j], scores[j]
        elif parent[1] == "3" and sub is not None:  # "t3_...": the submission itself
            parent_created, parent_score = sub_created, sub_score
        else:
            parent_created, parent_score = None, None
        # _EXAMPLE_COMPUTED order
        out.example(
            i,
            (
                split,
                context,
                context_depth,
                depth[i],
                complete[i],  # chain_complete
                sub is not None,  # submission_found
                op_author is not None and authors[i] == op_author,  # reply_is_op
                sibling_pct[i],
                thread_pct[i],
                created[i] - parent_created if parent_created is not None else None,  # seconds_since_parent
                created[i] - sub_created if sub_created is not None else None,  # seconds_since_submission
                parent_score,
                len(siblings[parent]) - 1,  # num_siblings
                rank_by_time[i],
                n_comments,  # thread_comments
            ),
        )

    n_pairs = 0
    if cfg.pairs.enabled:
        for parent, group in kept_siblings.items():
            if len(group) > 1:
                context, context_depth = context_for(parent)
                for a, b in _pairs_for(group, cols, cfg):
                    out.pair(a, b, (parent, split, context, context_depth))
                    n_pairs += 1

    first = sub if sub is not None else (comments[0] if comments else rows[0])
    out.thread_rows.append(
        {
            "record_kind": "thread",
            "id": link_id[3:],
            "link_id": link_id,
            "subreddit": cols["subreddit"][first],
            "split": split,
            "outcome": "thread" if sub is not None else "thread_without_submission",
            "n_comments": n_comments,
            "n_dangling": dangling,
            "n_examples": len(kept),
            "n_pairs": n_pairs,
        }
    )


def _pairs_for(group: list[int], cols: dict, cfg: PrepareConfig) -> list[tuple[int, int]]:
    ids, scores, created = cols["id"], cols["score"], cols["created_utc"]
    candidates = group if len(group) <= MAX_PAIR_CANDIDATES else sorted(group, key=lambda i: (created[i], ids[i]))[:MAX_PAIR_CANDIDATES]
    if len(candidates) <= 8:  # small groups: checking all pairs is cheaper than the heap
        found = [
            (scores[a] - scores[b], ids[a], ids[b], a, b)
            for a in candidates
            for b in candidates
            if a != b and prefers(scores[a], created[a], scores[b], created[b], cfg.pairs)
        ]
        found.sort(key=lambda f: (-f[0], f[1], f[2]))
        return [(a, b) for *_, a, b in found[: cfg.pairs.max_pairs_per_parent]]
    return largest_gap_pairs(candidates, scores, created, ids, cfg.pairs)


def largest_gap_pairs(candidates: list[int], scores: list, created: list, ids: list, cfg: Any) -> list[tuple[int, int]]:
    """Up to `cfg.max_pairs_per_parent` (preferred, other) pairs with the largest score gaps
    (ties: by ids), each passing `labels.prefers`.

    Best-first over the (higher, lower) grid of candidates sorted by score: gaps only shrink as
    the higher index falls or the lower index rises, so a heap visits pairs in decreasing gap
    order and stops once enough pairs passed or the gap is below the margin. Same result as
    checking all n^2 pairs and sorting, at a fraction of the cost for big parents.
    """
    import heapq

    order = sorted(candidates, key=lambda i: (scores[i], ids[i]))
    n = len(order)
    limit, margin = cfg.max_pairs_per_parent, max(cfg.min_score_margin, 1)
    # entries: (-gap, id_hi, id_lo, hi, lo) -> pops largest gap, then smallest ids
    heap = [(-(scores[order[n - 1]] - scores[order[0]]), ids[order[n - 1]], ids[order[0]], n - 1, 0)]
    seen = {(n - 1, 0)}
    found: list[tuple[int, str, str, int, int]] = []
    cutoff = None  # once `limit` pairs passed: finish their gap (ties), then stop
    while heap:
        neg_gap, id_hi, id_lo, hi, lo = heapq.heappop(heap)
        gap = -neg_gap
        if gap < margin or (cutoff is not None and gap < cutoff):
            break  # every remaining pair has a smaller gap
        a, b = order[hi], order[lo]
        if prefers(scores[a], created[a], scores[b], created[b], cfg):
            found.append((gap, id_hi, id_lo, a, b))
            if cutoff is None and len(found) >= limit:
                cutoff = gap
        for nhi, nlo in ((hi - 1, lo), (hi, lo + 1)):
            if nlo < nhi and (nhi, nlo) not in seen:
                seen.add((nhi, nlo))
                x, y = order[nhi], order[nlo]
                heapq.heappush(heap, (-(scores[x] - scores[y]), ids[x], ids[y], nhi, nlo))
    found.sort(key=lambda f: (-f[0], f[1], f[2]))
    return [(a, b) for _, _, _, a, b in found[:limit]]
