"""Tests for karma_ray.data.synth: format fidelity, exact ground-truth counts, determinism, planted signal.

The recount below is deliberately independent of the generator: it decompresses the files, parses every line
with the stdlib json module and classifies it from the record alone (no access to generator internals).
"""

from __future__ import annotations

import calendar
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pytest
import zstandard

from karma_ray.data import synth
from karma_ray.data.synth import (
    BOT_AUTHORS,
    MARKERS_BAD,
    MARKERS_GOOD,
    OVERLONG_CHARS,
    TAU_EARLY_SECONDS,
    TOPIC_NAMES,
    TOPICS,
    UNSETTLED_SECONDS,
    SynthSummary,
    marker_score,
    planted_components,
    score_from_latent,
    subreddit_offsets,
    topic_of_text,
    write_synthetic_corpus,
)

N_COMMENTS = 20_000
SEED = 7
CATEGORIES = ("malformed", "duplicate", "deleted", "removed", "bot", "moderator", "empty", "overlong",
              "unsettled", "clean")


# ---------------------------------------------------------------------------------------------------------
# independent reader / recount
# ---------------------------------------------------------------------------------------------------------


def _decompress(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(fh).read()


def _lines(path: Path) -> list[bytes]:
    data = _decompress(path)
    assert data == b"" or data.endswith(b"\n"), f"{path.name}: last line not terminated"
    return data.split(b"\n")[:-1]


def _month_bounds(path: Path) -> tuple[int, int]:
    year, month = (int(x) for x in path.stem.split("_")[1].split("-"))
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    end = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
    return start, end


@dataclass
class Recount:
    categories: Counter = field(default_factory=Counter)
    invalid_utf8: int = 0
    string_created: int = 0
    missing_name: int = 0
    comment_lines: int = 0
    comments: list[dict] = field(default_factory=list)  # well-formed, non-duplicate, in file order
    category_of: dict[str, str] = field(default_factory=dict)  # comment id -> category
    submissions: dict[str, dict] = field(default_factory=dict)  # submission id -> record
    submission_lines: int = 0
    multi_category: int = 0  # comments matching more than one drop predicate (must stay 0)
    noncanonical_lines: int = 0  # well-formed lines that differ from orjson.dumps(json.loads(line))
    malformed_lenient_json: int = 0  # malformed lines that parse as an object after errors="replace"
    month_violations: int = 0


def _drop_predicates(c: dict) -> dict[str, bool]:
    body = c["body"]
    deleted, removed = body == "[deleted]", body == "[removed]"
    bot = c["author"] in BOT_AUTHORS
    return {
        "deleted": deleted,
        "removed": removed,
        "bot": bot,
        "moderator": (c["distinguished"] == "moderator" or c["stickied"] is True)
        and not (bot or deleted or removed),
        "empty": body.strip() == "",
        "overlong": len(body) > OVERLONG_CHARS,
        "unsettled": c["retrieved_on"] - int(c["created_utc"]) < UNSETTLED_SECONDS,
    }


def recount(output_dir: Path) -> Recount:
    r = Recount()
    seen: set[str] = set()
    for path in sorted(output_dir.glob("RC_*.zst")):  # lexicographic == month order
        start, end = _month_bounds(path)
        for line in _lines(path):
            r.comment_lines += 1
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                r.invalid_utf8 += 1
                r.categories["malformed"] += 1
                try:
                    if isinstance(json.loads(line.decode("utf-8", errors="replace")), dict):
                        r.malformed_lenient_json += 1
                except ValueError:
                    pass
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                r.categories["malformed"] += 1
                continue
            if orjson.dumps(obj) != line:
                r.noncanonical_lines += 1
            if not start <= int(obj["created_utc"]) < end:
                r.month_violations += 1
            if obj["id"] in seen:
                r.categories["duplicate"] += 1
                continue
            seen.add(obj["id"])
            predicates = _drop_predicates(obj)
            hits = [name for name, hit in predicates.items() if hit]
            r.multi_category += len(hits) > 1
            category = hits[0] if hits else "clean"
            r.categories[category] += 1
            r.category_of[obj["id"]] = category
            r.string_created += isinstance(obj["created_utc"], str)
            r.missing_name += "name" not in obj
            r.comments.append(obj)
    for path in sorted(output_dir.glob("RS_*.zst")):
        start, end = _month_bounds(path)
        for line in _lines(path):
            r.submission_lines += 1
            obj = json.loads(line)
            r.month_violations += not start <= obj["created_utc"] < end
            r.submissions[obj["id"]] = obj
    return r


def spearman(x, y) -> float:
    """Spearman rank correlation with average ranks for ties (numpy only)."""

    def ranks(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="stable")
        sorted_a = a[order]
        _, first, counts = np.unique(sorted_a, return_index=True, return_counts=True)
        out = np.empty(len(a))
        out[order] = np.repeat(first + (counts - 1) / 2.0, counts)
        return out

    return float(np.corrcoef(ranks(np.asarray(x, float)), ranks(np.asarray(y, float)))[0, 1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, SynthSummary, Recount]:
    out = tmp_path_factory.mktemp("synth")
    summary = write_synthetic_corpus(out, N_COMMENTS, seed=SEED)
    return out, summary, recount(out)


# ---------------------------------------------------------------------------------------------------------
# counts
# ---------------------------------------------------------------------------------------------------------


def test_summary_equation_adds_up(corpus):
    _, s, _ = corpus
    assert s.comments_written == N_COMMENTS
    assert s.comments_written == (s.malformed_lines + s.deleted_bodies + s.removed_bodies + s.bot_comments
                                  + s.moderator_comments + s.empty_bodies + s.overlong_bodies + s.unsettled_scores
                                  + s.duplicate_lines + s.clean_comments)
    assert 0 < s.invalid_utf8_lines <= s.malformed_lines
    # every category and quirk is exercised at this size (fixed seed)
    for name, value in s.to_dict().items():
        if isinstance(value, int) and name != "seed":
            assert value > 0, name


def test_summary_matches_independent_recount(corpus):
    _, s, r = corpus
    assert r.comment_lines == s.comments_written
    assert r.submission_lines == s.submissions_written
    expected = {"malformed": s.malformed_lines, "duplicate": s.duplicate_lines, "deleted": s.deleted_bodies,
                "removed": s.removed_bodies, "bot": s.bot_comments, "moderator": s.moderator_comments,
                "empty": s.empty_bodies, "overlong": s.overlong_bodies, "unsettled": s.unsettled_scores,
                "clean": s.clean_comments}
    assert {c: r.categories[c] for c in CATEGORIES} == expected
    assert r.invalid_utf8 == s.invalid_utf8_lines
    assert r.string_created == s.string_created_utc
    assert r.missing_name == s.missing_name
    assert r.multi_category == 0, "drop categories must be disjoint"


def test_lines_are_canonical_json_and_malformed_stay_malformed(corpus):
    _, _, r = corpus
    assert r.noncanonical_lines == 0  # hand-formatted lines == orjson.dumps of the parsed object
    assert r.malformed_lenient_json == 0  # invalid UTF-8 lines stay invalid JSON under errors="replace"


def test_summary_json_written(corpus):
    out, s, _ = corpus
    report = json.loads((out / "synth_summary.json").read_text())
    for key, value in s.to_dict().items():
        assert report[key] == value
    planted = report["planted"]
    assert "latent" in planted["formula"]
    assert planted["constants"]["W_TOPIC"] == synth.W_TOPIC
    assert planted["constants"]["TAU_EARLY_SECONDS"] == TAU_EARLY_SECONDS
    assert planted["topics"] == {t: list(w) for t, w in TOPICS.items()}
    assert planted["subreddit_offsets"] == subreddit_offsets(report["subreddits"])
    assert [Path(f).name for f in s.files] == ["RC_2015-01.zst", "RS_2015-01.zst", "RC_2015-02.zst",
                                               "RS_2015-02.zst"]


# ---------------------------------------------------------------------------------------------------------
# format and structure
# ---------------------------------------------------------------------------------------------------------


def test_files_need_the_2gib_window(corpus):
    out, _, _ = corpus
    path = out / "RC_2015-01.zst"
    header = path.read_bytes()[:18]
    assert zstandard.get_frame_parameters(header).window_size == 2**31
    with open(path, "rb") as fh, pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().stream_reader(fh).read()


def test_created_utc_in_file_month(corpus):
    _, _, r = corpus
    assert r.month_violations == 0
    # threads cross the month boundary: some comments in February reply into January threads
    boundary = calendar.timegm((2015, 2, 1, 0, 0, 0))
    january_links = {c["link_id"] for c in r.comments if int(c["created_utc"]) < boundary}
    february_links = {c["link_id"] for c in r.comments if int(c["created_utc"]) >= boundary}
    assert january_links & february_links


def test_record_fields_look_like_pushshift(corpus):
    _, _, r = corpus
    for c in r.comments[:2000]:
        assert c["id"].isalnum() and c["id"] == c["id"].lower()
        assert int(c["id"], 36) > 0
        if "name" in c:
            assert c["name"] == "t1_" + c["id"]
        assert c["ups"] == c["score"] and c["downs"] == 0
        assert c["parent_id"][:3] in ("t1_", "t3_") and c["link_id"].startswith("t3_")
        assert c["edited"] is False or (isinstance(c["edited"], int) and c["edited"] > int(c["created_utc"]))
        assert c["distinguished"] in (None, "moderator")
        assert isinstance(c["stickied"], bool) and isinstance(c["is_submitter"], bool)
        assert c["controversiality"] in (0, 1) and c["gilded"] >= 0
        assert c["subreddit_id"].startswith("t5_")
    for s in list(r.submissions.values())[:500]:
        assert s["name"] == "t3_" + s["id"]
        assert isinstance(s["title"], str) and s["title"]
        if s["is_self"]:
            assert s["selftext"] != ""
        else:
            assert s["selftext"] == ""
        assert 0.0 <= s["upvote_ratio"] <= 1.0 and s["num_comments"] >= 0
    selftexts = Counter(s["selftext"] for s in r.submissions.values())
    assert selftexts["[deleted]"] > 0 and selftexts["[removed]"] > 0
    assert len({c["id"] for c in r.comments}) == len(r.comments)


def test_references_resolve_except_counted_dangling(corpus):
    _, s, r = corpus
    by_id = {c["id"]: c for c in r.comments}
    dangling = 0
    for c in r.comments:
        parent = c["parent_id"]
        if parent.startswith("t3_"):
            assert parent == c["link_id"]
            continue
        p = by_id.get(parent[3:])
        if p is None:
            dangling += 1
            continue
        assert p["link_id"] == c["link_id"]
        assert int(p["created_utc"]) < int(c["created_utc"])
    assert dangling == s.dangling_parents
    threads = {c["link_id"][3:] for c in r.comments}
    missing = threads - set(r.submissions)
    report = json.loads((Path(s.files[0]).parent / "synth_summary.json").read_text())
    assert 0 < len(missing) <= report["ground_truth"]["missing_submissions"]
    assert len(missing) < 0.06 * len(threads)


def test_thread_shapes_are_realistic(corpus):
    _, _, r = corpus
    by_id = {c["id"]: c for c in r.comments}
    depth: dict[str, int] = {}
    for c in r.comments:  # parents precede children in the files
        parent = c["parent_id"]
        depth[c["id"]] = 0 if parent.startswith("t3_") else depth.get(parent[3:], -99) + 1
    assert max(depth.values()) >= 8
    top_level = Counter(c["link_id"] for c in r.comments if c["parent_id"].startswith("t3_"))
    assert top_level.most_common(1)[0][1] >= 10  # some threads have many top-level comments
    # children of deleted/removed comments are kept, as in real threads
    orphans_of_deleted = sum(1 for c in r.comments if c["parent_id"].startswith("t1_")
                             and r.category_of.get(c["parent_id"][3:]) in ("deleted", "removed"))
    assert orphans_of_deleted > 0
    # OP replies in some threads; is_submitter agrees with the submission's author
    op_replies = 0
    for c in r.comments:
        sub = r.submissions.get(c["link_id"][3:])
        if sub is None or sub["author"] == "[deleted]" or c["author"] == "[deleted]":
            continue
        assert c["is_submitter"] == (c["author"] == sub["author"])
        op_replies += c["is_submitter"]
    assert op_replies > 0
    # replies come after their parents, the first ones within minutes
    delays = [int(c["created_utc"]) - int(by_id[c["parent_id"][3:]]["created_utc"])
              for c in r.comments if c["parent_id"][3:] in by_id]
    assert min(delays) > 0 and np.median(delays) < 3 * 3600


def test_quirk_records(corpus):
    _, _, r = corpus
    by_category = defaultdict(list)
    for c in r.comments:
        by_category[r.category_of[c["id"]]].append(c)
    assert all(c["author"] == "[deleted]" for c in by_category["deleted"])
    assert all(c["score"] in (0, 1, 2) for c in by_category["unsettled"])
    assert all(c["retrieved_on"] - int(c["created_utc"]) >= 86400 for c in by_category["clean"])
    assert {c["author"] for c in by_category["bot"]} <= set(BOT_AUTHORS)
    assert any(c["author"] == "AutoModerator" and c["stickied"] for c in by_category["bot"])


# ---------------------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------------------


def test_deterministic_byte_identical(tmp_path):
    a = write_synthetic_corpus(tmp_path / "a", 4000, seed=3, n_months=3)
    b = write_synthetic_corpus(tmp_path / "b", 4000, seed=3, n_months=3)
    c = write_synthetic_corpus(tmp_path / "c", 4000, seed=4, n_months=3)
    assert a.to_dict() | {"files": None} == b.to_dict() | {"files": None}
    assert len(a.files) == 6
    for fa, fb, fc in zip(a.files, b.files, c.files):
        assert Path(fa).read_bytes() == Path(fb).read_bytes()
        assert Path(fa).read_bytes() != Path(fc).read_bytes()


def test_custom_subreddits_and_months(tmp_path):
    subs = ("alpha_sub", "beta_sub", "gamma_sub")
    s = write_synthetic_corpus(tmp_path, 3000, seed=1, n_months=3, subreddits=subs)
    assert s.comments_written == 3000
    r = recount(tmp_path)
    assert r.comment_lines == 3000 and r.month_violations == 0
    assert {c["subreddit"] for c in r.comments} == set(subs)
    assert sorted(p.name for p in tmp_path.glob("RC_*.zst")) == ["RC_2015-01.zst", "RC_2015-02.zst",
                                                                 "RC_2015-03.zst"]


def test_tiny_and_empty_corpora(tmp_path):
    assert write_synthetic_corpus(tmp_path / "zero", 0).comments_written == 0
    assert recount(tmp_path / "zero").comment_lines == 0
    assert write_synthetic_corpus(tmp_path / "one", 1).comments_written == 1
    with pytest.raises(ValueError):
        write_synthetic_corpus(tmp_path / "bad", -1)


# ---------------------------------------------------------------------------------------------------------
# planted signal
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_features(corpus) -> dict[str, np.ndarray]:
    """Planted components of clean comments whose parent and submission are both in the files."""
    _, _, r = corpus
    by_id = {c["id"]: c for c in r.comments}
    rows = defaultdict(list)
    for c in r.comments:
        if r.category_of[c["id"]] != "clean":
            continue
        sub = r.submissions.get(c["link_id"][3:])
        if sub is None:
            continue
        if c["parent_id"].startswith("t3_"):
            parent_created = sub["created_utc"]
        elif c["parent_id"][3:] in by_id:
            parent_created = by_id[c["parent_id"][3:]]["created_utc"]
        else:
            continue  # dangling
        comp = planted_components(c, parent_created, topic_of_text(sub["title"]))
        rows["score"].append(c["score"])
        rows["on_topic"].append(comp["on_topic"])
        rows["early"].append(comp["early_bonus"])
        rows["marker"].append(comp["marker_score"])
        rows["offset"].append(comp["subreddit_offset"])
        rows["latent_mean"].append(comp["latent_mean"])
        rows["body_topic"].append(TOPIC_NAMES.index(comp["topic"]))
    return {k: np.asarray(v, dtype=float) for k, v in rows.items()}


def test_planted_signal_present(clean_features):
    f = clean_features
    assert len(f["score"]) > 10_000
    rho_topic = spearman(f["score"], f["on_topic"])
    rho_early = spearman(f["score"], f["early"])
    rho_marker = spearman(f["score"], f["marker"])
    assert 0.3 < rho_topic < 0.55, rho_topic
    assert 0.2 < rho_early < 0.45, rho_early
    assert 0.15 < rho_marker, rho_marker
    assert spearman(f["score"], f["offset"]) > 0.1
    assert spearman(f["score"], f["latent_mean"]) > 0.55  # the noise-free latent explains most of the rank
    means = [f["score"][f["marker"] == m].mean() for m in (-1, 0, 1)]
    assert means[0] < means[1] < means[2]
    # heavy tail and some negative scores, as on Reddit
    assert f["score"].max() > 100 * np.median(f["score"])
    assert 0.02 < (f["score"] <= 0).mean() < 0.2


def test_on_topic_is_only_learnable_with_context(clean_features):
    """P(on-topic | the reply's own topic) is the same for every topic: the reply alone cannot tell."""
    f = clean_features
    rates = [f["on_topic"][f["body_topic"] == t].mean() for t in range(len(TOPIC_NAMES))]
    assert max(abs(rate - synth.P_ON_TOPIC) for rate in rates) < 0.06, rates


def test_on_topic_replies_echo_the_title_keyword(corpus):
    """A clean reply shares a topic word with its thread's title exactly when it is on-topic (the keyword)."""
    _, _, r = corpus
    checked = on = 0
    for c in r.comments:
        sub = r.submissions.get(c["link_id"][3:])
        if r.category_of[c["id"]] != "clean" or sub is None:
            continue
        body_words = set(synth._WORD_RE.findall(c["body"].lower())) & set(synth._WORD_TO_TOPIC)
        title_words = set(synth._WORD_RE.findall(sub["title"].lower())) & set(synth._WORD_TO_TOPIC)
        on_topic = topic_of_text(c["body"]) == topic_of_text(sub["title"])
        assert bool(body_words & title_words) == on_topic, (sub["title"], c["body"])
        checked += 1
        on += on_topic
    assert checked > 10_000 and 0.5 < on / checked < 0.7


def test_reply_words_do_not_reveal_on_topic(clean_features, corpus):
    """P(on-topic | a topic word in the reply) is P_ON_TOPIC for every word, up to binomial noise: keywords
    are balanced inside each topic, so echoing the thread's keyword leaks nothing without the title."""
    _, _, r = corpus
    on_by_word: dict[str, list[int]] = defaultdict(list)
    for c in r.comments:
        sub = r.submissions.get(c["link_id"][3:])
        if r.category_of[c["id"]] != "clean" or sub is None:
            continue
        on_topic = int(topic_of_text(c["body"]) == topic_of_text(sub["title"]))
        for w in set(synth._WORD_RE.findall(c["body"].lower())) & set(synth._WORD_TO_TOPIC):
            on_by_word[w].append(on_topic)
    assert len(on_by_word) == sum(len(w) for w in TOPICS.values())
    p = synth.P_ON_TOPIC
    z = [abs(np.mean(v) - p) / math.sqrt(p * (1 - p) / len(v)) for v in on_by_word.values()]
    assert max(z) < 4.5, max(z)  # 160 words: |z| > 4.5 has probability ~1e-3 without a leak


def test_marker_ground_truth_matches_text(corpus):
    out, _, r = corpus
    truth = json.loads((out / "synth_summary.json").read_text())["ground_truth"]
    markers = [marker_score(c["body"]) for c in r.comments if r.category_of[c["id"]] == "clean"]
    assert set(markers) <= {-1, 0, 1}
    assert markers.count(1) == truth["clean_marker_good"]
    assert markers.count(-1) == truth["clean_marker_bad"]
    # every clean body carries words of exactly one topic
    for c in r.comments[:3000]:
        if r.category_of[c["id"]] == "clean":
            topics = {synth._WORD_TO_TOPIC[w] for w in synth._WORD_RE.findall(c["body"].lower())
                      if w in synth._WORD_TO_TOPIC}
            assert len(topics) == 1


def test_pure_helpers():
    assert topic_of_text("A skillet of garlic and basil") == "cooking"
    assert topic_of_text("nothing here") is None
    assert marker_score("In my experience this works. Source: x") == 2
    assert marker_score("First! lol") == -2
    latents = np.linspace(-4, 4, 401)
    scores = [score_from_latent(float(z)) for z in latents]
    assert scores == sorted(scores) and score_from_latent(0.0) == 1
    assert np.array_equal(synth._scores_from_latent(latents), np.array(scores))
    comp = planted_components({"body": "garlic skillet thanks for asking", "created_utc": "1000",
                               "subreddit": "AskReddit"}, 1000, "cooking")
    assert comp["on_topic"] == 1 and comp["marker_score"] == 1 and comp["early_bonus"] == 1.0
    expected = (synth.LATENT_BIAS + synth.W_TOPIC + synth.W_MARKER + synth.W_EARLY
                + subreddit_offsets()["AskReddit"])
    assert math.isclose(comp["latent_mean"], expected)
    for phrase in MARKERS_GOOD + MARKERS_BAD:  # no marker is hidden in the vocabularies
        for words in list(TOPICS.values()) + [synth.FILLER_WORDS]:
            assert phrase not in " ".join(words)


def test_gold_text_quality_is_the_noise_free_text_part_of_the_planted_score():
    from karma_ray.data.synth import W_MARKER, W_TOPIC, gold_text_quality

    ctx = "[title] Best garlic and basil marinade?\n[user] any tips"
    assert gold_text_quality(ctx, "Roast the garlic first, for example.") == pytest.approx(W_TOPIC + W_MARKER)  # on topic, +1 marker
    assert gold_text_quality(ctx, "the orbit of a comet lol") == pytest.approx(-W_MARKER)  # off topic, a bad marker
    assert gold_text_quality(ctx, "no topic words at all") == 0.0  # no topic word: off topic
    assert gold_text_quality("[user] no title here", "garlic") is None
    assert gold_text_quality("…cut context\n[user] x", "garlic") is None
