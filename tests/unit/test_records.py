"""Parsing and record-level filters, on hand-written lines."""

import orjson
import pyarrow.compute as pc
import pytest

from karma_ray.config import FilterConfig
from karma_ray.data import records
from karma_ray.data.records import (
    ChunkInfo,
    RecordError,
    apply_filters,
    normalize_record,
    parse_chunk,
    parse_lines,
)

INFO = ChunkInfo("RC_test.zst", 0, "comment")


def comment(**kw):
    base = {
        "id": "c1",
        "parent_id": "t3_s1",
        "link_id": "t3_s1",
        "subreddit": "science",
        "author": "alice",
        "body": "a reply",
        "score": 5,
        "created_utc": 1_400_000_000,
        "retrieved_on": 1_500_000_000,
    }
    base.update(kw)
    return base


def lines(*objs) -> bytes:
    return b"".join((o if isinstance(o, bytes) else orjson.dumps(o)) + b"\n" for o in objs)


def reasons(*objs, cfg=FilterConfig()):
    t = apply_filters(parse_chunk(lines(*objs), INFO), cfg)
    return t["drop_reason"].to_pylist()


def test_created_utc_is_an_int_whatever_its_json_type():
    t = parse_chunk(lines(comment(created_utc="1134000000"), comment(id="c2", created_utc=1134000001.7)), INFO)
    assert t["created_utc"].to_pylist() == [1134000000, 1134000001]


def test_fast_and_line_paths_agree_on_clean_input(monkeypatch):
    data = lines(
        comment(),
        comment(id="c2", parent_id="t1_c1", distinguished="moderator", stickied=True),
        {"id": "s1", "title": "A post", "selftext": "", "author": "op", "score": 10, "created_utc": 1, "subreddit": "science"},
        comment(id="c3", _meta={"retrieved_2nd_on": 1_400_100_000}),
    )
    exact = parse_lines(data, INFO)
    monkeypatch.setattr(records, "parse_lines", None)  # clean lines take pyarrow's path alone
    fast = parse_chunk(data, INFO)
    assert fast.num_rows == 4 and fast.equals(exact)


def _multiset(t):
    return sorted(map(str, t.to_pylist()))


def test_mixed_path_equals_the_exact_path_on_a_messy_chunk():
    objs = []
    for i in range(300):
        objs.append(comment(id=f"c{i}", created_utc=str(1_400_000_000 + i) if i % 7 == 0 else 1_400_000_000 + i))
        if i % 50 == 0:
            objs += [b"garbage", b'{"id": "cut', b'{"id":"u","body":"\xff"}', b'["x"]', orjson.dumps({"id": "nofields"}),
                     orjson.dumps(comment(id=f"f{i}", created_utc="12.5")), orjson.dumps(comment(id=f"g{i}", created_utc="soon"))]
    data = lines(*objs)
    mixed, exact = parse_chunk(data, INFO), parse_lines(data, INFO)
    assert mixed.num_rows == exact.num_rows == len(objs)
    assert _multiset(mixed) == _multiset(exact)


def test_submission_is_normalized_to_its_own_thread():
    sub = {"id": "s1", "title": "T", "selftext": "body", "author": "op", "score": 3, "created_utc": 7}
    row = normalize_record(sub, "x")
    assert (row["record_kind"], row["link_id"], row["text"], row["title"]) == ("submission", "t3_s1", "body", "T")


def test_prefixed_ids_are_stripped_and_lowercased():
    assert normalize_record(comment(id="t1_AbC"), "x")["id"] == "abc"


def test_arctic_shift_refetch_time_is_the_retrieval_time():
    row = normalize_record(comment(retrieved_on=1_400_000_010, _meta={"retrieved_2nd_on": 1_400_130_000}), "x")
    assert row["retrieved_on"] == 1_400_130_000


@pytest.mark.parametrize(
    "record, reason",
    [
        ([1, 2], "not_an_object"),
        ({k: v for k, v in comment().items() if k != "score"}, "missing_field:score"),
        ({k: v for k, v in comment().items() if k != "link_id"}, "missing_field:link_id"),
        ({k: v for k, v in comment().items() if k != "created_utc"}, "missing_field:created_utc"),
        (comment(score="many"), "bad_type:score"),
        (comment(created_utc="yesterday"), "bad_type:created_utc"),
        (comment(body=42), "bad_type:body"),
        (comment(parent_id="x_1"), "bad_value:parent_id"),
        (comment(id="no spaces!"), "bad_value:id"),
        ({"id": "z", "score": 1, "created_utc": 1}, "unknown_kind"),
    ],
)
def test_records_that_cannot_be_normalized_name_their_reason(record, reason):
    with pytest.raises(RecordError, match=reason):
        normalize_record(record, "x")
    # ... and in a chunk they become one malformed row each, never vanish.
    t = parse_chunk(lines(comment(id="ok1"), record, comment(id="ok2")), INFO)
    assert sorted(zip(t["record_kind"].to_pylist(), t["drop_reason"].to_pylist()), key=str) == sorted(
        [("comment", None), ("comment", None), ("malformed_comment", reason)], key=str)


def test_bad_json_invalid_utf8_and_blank_lines():
    data = lines(comment(), b'{"id": "c2", "body": "cut', b'{"id":"c3","body":"\xff\xfe"}', comment(id="c4")) + b"\n   \n"
    t = parse_chunk(data, INFO)
    got = sorted(zip(t["drop_reason"].to_pylist(), t["text"].to_pylist()), key=str)
    assert sorted((r for r, _ in got), key=str) == sorted([None, "bad_json", "invalid_utf8", None], key=str)
    assert [x for r, x in got if r == "bad_json"][0].startswith('{"id": "c2"')  # a snippet to debug with


def test_truncated_tail_is_counted_as_truncated_line():
    data = lines(comment()) + b'{"id": "c9", "bo'
    t = parse_chunk(data, INFO, truncated_tail=True)
    assert t["drop_reason"].to_pylist() == [None, "truncated_line"]
    whole = parse_chunk(lines(comment()) + orjson.dumps(comment(id="c9")), INFO, truncated_tail=True)
    assert whole["drop_reason"].to_pylist() == [None, None]  # a complete last record is kept


def test_malformed_lines_of_submission_files_are_counted_as_submissions():
    t = parse_chunk(b"garbage\n", ChunkInfo("RS_2019-10.zst", 3, "submission"))
    assert t["record_kind"].to_pylist() == ["malformed_submission"]
    assert t["link_id"][0].as_py() == "~malformed/RS_2019-10.zst#3"


# ------------------------------------------------------------------ filters, one test each


def test_filter_deleted_and_removed():
    assert reasons(comment(body="[deleted]"), comment(body="[removed]")) == ["deleted", "removed"]
    assert reasons(comment(body="[deleted]"), cfg=FilterConfig(drop_deleted=False)) == [None]


def test_filter_bots_by_name_and_suffix_case_rules():
    got = reasons(
        comment(author="AutoModerator"),
        comment(author="automoderator"),
        comment(author="RemindMeBot"),
        comment(author="my_bot"),
        comment(author="Talbot"),
    )
    assert got == ["bot", "bot", "bot", "bot", None]


def test_filter_distinguished_and_stickied():
    assert reasons(comment(distinguished="moderator"), comment(stickied=True), comment(distinguished=None)) == [
        "distinguished",
        "stickied",
        None,
    ]


def test_filter_empty_and_too_long():
    cfg = FilterConfig(max_chars=10)
    assert reasons(comment(body="   "), comment(body="x" * 11), comment(body="x" * 10), cfg=cfg) == ["empty", "too_long", None]


def test_filter_unsettled_only_where_retrieval_time_is_known():
    cfg = FilterConfig(min_settle_seconds=3600)
    got = reasons(
        comment(created_utc=1000, retrieved_on=1000 + 59),
        comment(created_utc=1000, retrieved_on=1000 + 3600),
        {k: v for k, v in comment().items() if k != "retrieved_on"},
        cfg=cfg,
    )
    assert got == ["unsettled_score", None, None]


def test_first_reason_in_order_wins_and_submissions_are_never_dropped():
    sub = {"id": "s1", "title": "T", "selftext": "[deleted]", "author": "AutoModerator", "score": 1, "created_utc": 1}
    assert reasons(comment(body="[deleted]", author="AutoModerator", stickied=True), sub) == ["deleted", None]


def test_filter_counts_add_up_on_a_mixed_chunk():
    objs = [comment(id=f"c{i}", body=b) for i, b in enumerate(["ok", "[deleted]", "", "fine", "[removed]"])]
    t = apply_filters(parse_chunk(lines(*objs, b"not json"), INFO), FilterConfig())
    counts = {r["values"]: r["counts"] for r in pc.value_counts(t["drop_reason"]).to_pylist()}
    assert counts == {None: 2, "deleted": 1, "empty": 1, "removed": 1, "bad_json": 1}
