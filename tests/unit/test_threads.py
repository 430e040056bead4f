"""Thread building on hand-made threads: chains, depth, dangling parents, duplicates, features,
labels, pairs, and the ledger's one-outcome-per-record accounting."""

import pytest

from karma_ray.config import PrepareConfig, load_config
from karma_ray.data.format import render_context
from karma_ray.data.records import rows_to_table
from karma_ray.data.threads import build_block


def rec(kind, rid, parent=None, link="t3_s", score=1, created=0, author="u", text=None, drop=None, retrieved=None, title=None):
    return {
        "record_kind": kind,
        "id": rid,
        "parent_id": parent,
        "link_id": link,
        "subreddit": "sub",
        "author": author,
        "text": text if text is not None else f"text {rid}",
        "title": title,
        "score": score,
        "created_utc": created,
        "retrieved_on": retrieved,
        "distinguished": None,
        "stickied": False,
        "drop_reason": drop,
        "source": "f",
    }


def thread():
    """s: "Title" by op
       a (op? no: alice, 10, t=100)
         b (op, 3, t=200)
           c (bob, 8, t=300) -- deleted
             d (carol, 2, t=400)
       e (dave, 1, t=150)
       f (erin, 5, t=500), parent x (missing from the corpus)
    """
    return [
        rec("submission", "s", link="t3_s", score=50, created=0, author="op", text="Body", title="Title"),
        rec("comment", "a", "t3_s", score=10, created=100, author="alice"),
        rec("comment", "b", "t1_a", score=3, created=200, author="op"),
        rec("comment", "c", "t1_b", score=8, created=300, author="bob", text="[deleted]", drop="deleted"),
        rec("comment", "d", "t1_c", score=2, created=400, author="carol"),
        rec("comment", "e", "t3_s", score=1, created=150, author="dave"),
        rec("comment", "f", "t1_x", score=5, created=500, author="erin"),
    ]


def build(rows, *overrides):
    cfg = load_config(PrepareConfig, None, ["pairs.min_score_ratio=2", *overrides])
    stage = build_block(rows_to_table(rows), cfg)
    ex = {r["id"]: r for r in stage.table("example").to_pylist()}
    return ex, stage.table("pair").to_pylist(), stage.table("ledger").to_pylist()


def test_context_is_submission_then_ancestors_oldest_first_with_roles():
    ex, _, _ = build(thread())
    expected = render_context("Title", "Body", [("user", "text a"), ("OP", "text b"), ("user", "[deleted]")], 4000)
    assert ex["d"]["context"] == expected
    assert ex["d"]["context"] == "[title] Title\n[post] Body\n[user] text a\n[OP] text b\n[user] [deleted]"
    assert ex["d"]["context_depth"] == 3 and ex["d"]["depth"] == 3
    assert ex["a"]["context"] == "[title] Title\n[post] Body" and ex["a"]["context_depth"] == 0
    assert ex["b"]["reply_is_op"] and not ex["a"]["reply_is_op"]


def test_context_keeps_the_nearest_k_turns():
    ex, _, _ = build(thread(), "threads.max_context_turns=2")
    assert ex["d"]["context"] == "[title] Title\n[post] Body\n[OP] text b\n[user] [deleted]"
    assert ex["d"]["context_depth"] == 2 and ex["d"]["depth"] == 3


def test_dangling_parent_keeps_partial_chain_and_is_counted():
    ex, _, ledger = build(thread())
    assert ex["f"]["chain_complete"] is False and ex["f"]["depth"] == 1 and ex["f"]["context_depth"] == 0
    assert ex["f"]["seconds_since_parent"] is None and ex["f"]["parent_score"] is None
    (t,) = [r for r in ledger if r["record_kind"] == "thread"]
    assert t["n_dangling"] == 1 and t["n_comments"] == 6 and t["n_examples"] == 5


def test_metadata_features_by_hand():
    ex, _, _ = build(thread())
    a, e, b = ex["a"], ex["e"], ex["b"]
    assert (a["num_siblings"], a["sibling_rank_by_time"], e["sibling_rank_by_time"]) == (1, 0, 1)
    assert (b["seconds_since_parent"], b["parent_score"], b["seconds_since_submission"]) == (100, 10, 200)
    assert (a["seconds_since_parent"], a["parent_score"]) == (100, 50)  # parent is the submission
    assert (a["hour"], a["weekday"]) == (0, 3)  # 1970-01-01 00:01:40 UTC was a Thursday
    assert a["thread_comments"] == 6


def test_labels_by_hand():
    ex, _, _ = build(thread())
    # kept scores in thread: a10 b3 d2 e1 f5 -> ranks among 4 others
    assert {k: ex[k]["thread_percentile"] for k in "abdef"} == {"a": 1.0, "b": 0.5, "d": 0.25, "e": 0.0, "f": 0.75}
    # siblings under t3_s: a10, e1
    assert (ex["a"]["sibling_percentile"], ex["e"]["sibling_percentile"]) == (1.0, 0.0)
    assert ex["d"]["sibling_percentile"] == 0.5  # alone under its parent
    assert ex["a"]["log_score"] == pytest.approx(2.3978952728)


def test_pairs_follow_the_shp_rule():
    rows = [
        rec("comment", "p", "t3_s", score=10, created=300),  # late and high: beats q and r
        rec("comment", "q", "t3_s", score=4, created=100),
        rec("comment", "r", "t3_s", score=1, created=200),
        rec("comment", "z", "t3_s", score=100, created=50),  # earliest: can never be preferred under SHP
    ]
    _, pairs, _ = build(rows)
    # q beats r by score but was written EARLIER: SHP refuses that pair.
    assert sorted((p["chosen_id"], p["rejected_id"]) for p in pairs) == [("p", "q"), ("p", "r")]
    _, loose, _ = build(rows, "pairs.shp_rule=false")
    assert ("z", "p") in {(p["chosen_id"], p["rejected_id"]) for p in loose}


def test_every_record_is_accounted_for_exactly_once():
    rows = thread() + [
        rec("comment", "a", "t3_s", score=99, created=100, retrieved=5),  # duplicate of a, retrieved later: wins
        rec("malformed_comment", None, link="~malformed/f#0", drop="bad_json"),
        rec("comment", "x1", "t3_other", link="t3_other", score=2, created=1),
    ]
    ex, _, ledger = build(rows)
    records_out = [r for r in ledger if r["record_kind"] != "thread"]
    assert len(ex) + len(records_out) == len(rows)
    assert ex["a"]["score"] == 99
    outcomes = sorted(r["outcome"] for r in records_out)
    assert outcomes == ["bad_json", "deleted", "duplicate", "submission"]
    threads = {r["link_id"]: r for r in ledger if r["record_kind"] == "thread"}
    assert threads["t3_other"]["outcome"] == "thread_without_submission"
    assert sum(t["n_examples"] for t in threads.values()) == len(ex)


def test_a_thread_is_never_split_across_splits():
    rows = [rec("comment", f"c{i}", "t3_" + str(i % 50), link="t3_" + str(i % 50), created=i) for i in range(500)]
    ex, _, _ = build(rows, "split.val_fraction=0.3", "split.test_fraction=0.3")
    by_link = {}
    for r in ex.values():
        by_link.setdefault(r["link_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_link.values())
    assert {s for ss in by_link.values() for s in ss} == {"train", "val", "test"}


def test_parent_cycle_in_corrupt_data_terminates():
    rows = [rec("comment", "a", "t1_b"), rec("comment", "b", "t1_a")]
    ex, _, _ = build(rows)
    assert set(ex) == {"a", "b"}


@pytest.mark.parametrize("seed", range(20))
def test_best_first_pairs_equal_brute_force(seed):
    import random

    from karma_ray.config import PairConfig
    from karma_ray.data.labels import prefers
    from karma_ray.data.threads import largest_gap_pairs

    rng = random.Random(seed)
    n = rng.randint(2, 40)
    scores = [rng.choice([-3, 0, 1, 1, 2, 2, 5, 9, 30]) for _ in range(n)]  # many ties on purpose
    created = [rng.randint(0, 50) for _ in range(n)]
    ids = [f"i{k:02d}" for k in range(n)]
    cfg = PairConfig(max_pairs_per_parent=rng.randint(1, 10), shp_rule=bool(seed % 2))
    brute = sorted(
        ((scores[a] - scores[b], ids[a], ids[b], a, b) for a in range(n) for b in range(n)
         if a != b and prefers(scores[a], created[a], scores[b], created[b], cfg)),
        key=lambda f: (-f[0], f[1], f[2]),
    )
    expected = [(a, b) for *_, a, b in brute[: cfg.max_pairs_per_parent]]
    assert largest_gap_pairs(list(range(n)), scores, created, ids, cfg) == expected
