"""`karma prepare` end to end on a local Ray cluster: the real dumps, ConvoKit, and bad input."""

import json
import subprocess
import sys
import time

import orjson
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
import zstandard

from karma_ray.config import PrepareConfig, load_config
from karma_ray.data.prepare import count_rows, run_prepare
from tests.conftest import CONVOKIT, PUSHSHIFT, REPO, need_shared

pytestmark = pytest.mark.ray


def zst_lines(path, lines: list[bytes]):
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31, write_content_size=False)
    with open(path, "wb") as fh, zstandard.ZstdCompressor(compression_params=params).stream_writer(fh) as w:
        w.write(b"".join(lines))
    return path


def raw_lines(path):
    d = zstandard.ZstdDecompressor(max_window_size=2**31)
    with open(path, "rb") as fh:
        return [line for line in d.stream_reader(fh).read().splitlines() if line.strip()]


def examples(out, split=None):
    ds = pads.dataset(out / "examples", format="parquet", partitioning="hive")
    t = ds.to_table()
    return t if split is None else t.filter(pc.equal(t["split"], split))


@pytest.fixture(scope="module")
def rc_2005_12(ray_cluster, tmp_path_factory):
    src = need_shared(PUSHSHIFT / "RC_2005-12.zst")
    out = tmp_path_factory.mktemp("rc0512")
    cfg = load_config(PrepareConfig)
    return src, out, run_prepare(cfg, str(out), inputs=[str(src)], overwrite=True).manifest


def test_real_dump_counts_add_up(rc_2005_12):
    src, out, m = rc_2005_12
    assert m.records_read == 1075 == len(raw_lines(src))
    assert m.records_read == m.records_malformed + sum(m.dropped.values()) + m.examples_written
    assert m.invariant_holds
    # independent recount of what the README documents for this file
    rows = [orjson.loads(line) for line in raw_lines(src)]
    assert m.dropped == {"deleted": sum(r["body"] == "[deleted]" for r in rows), "removed": sum(r["body"] == "[removed]" for r in rows)}
    assert m.dangling_parents == 15 and m.threads == 396
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("records_read", "records_malformed", "dropped", "examples_written", "pairs_written", "splits", "dangling_parents", "submissions_read", "config", "timings"):
        assert key in manifest
    assert count_rows(out / "examples") == m.examples_written == sum(m.splits.values())
    assert count_rows(out / "pairs") == m.pairs_written
    assert (out / "config.yaml").exists() and (out / "summary.md").exists()


def test_real_dump_has_deep_contexts_matching_an_independent_chain_count(rc_2005_12):
    src, out, m = rc_2005_12
    t = examples(out)
    rows = {"t1_" + r["id"]: r for r in map(orjson.loads, raw_lines(src))}

    def ancestors_in_file(r):
        n, p = 0, r["parent_id"]
        while p in rows:
            n, p = n + 1, rows[p]["parent_id"]
        return n

    kept = [r for r in rows.values() if r["body"] not in ("[deleted]", "[removed]")]
    expected = sum(min(ancestors_in_file(r), 4) >= 2 for r in kept)
    assert pc.sum(pc.greater_equal(t["context_depth"], 2)).as_py() == expected > 100
    deep = t.filter(pc.greater_equal(t["context_depth"], 2)).slice(0, 1).to_pylist()[0]
    assert deep["context"].count("\n[") + 1 >= 2


def test_no_thread_crosses_splits_and_pairs_follow_their_thread(rc_2005_12):
    _, out, m = rc_2005_12
    t = examples(out)
    per_link = t.group_by("link_id").aggregate([("split", "count_distinct")])
    assert pc.max(per_link["split_count_distinct"]).as_py() == 1
    splits = dict(zip(t["link_id"].to_pylist(), t["split"].to_pylist()))
    pairs = pads.dataset(out / "pairs", format="parquet", partitioning="hive").to_table().to_pylist()
    assert pairs and all(splits[p["link_id"]] == p["split"] for p in pairs)
    assert all(p["chosen_score"] > p["rejected_score"] and p["chosen_created_utc"] > p["rejected_created_utc"] for p in pairs)


def test_subreddit_z_uses_train_statistics(rc_2005_12):
    _, out, m = rc_2005_12
    train = examples(out, "train")
    z = train["subreddit_z"].to_numpy()
    assert abs(z.mean()) < 1e-9 and abs(z.std() - 1) < 1e-9  # one subreddit in this dump
    test = examples(out, "test")
    s = m.subreddit_stats["reddit.com"]
    first = test.slice(0, 1).to_pylist()[0]
    assert first["subreddit_z"] == pytest.approx((first["log_score"] - s["mean"]) / s["std"])


def test_convokit_sample(ray_cluster, tmp_path):
    folder = need_shared(CONVOKIT)
    m = run_prepare(load_config(PrepareConfig, None, ["filters.min_settle_seconds=0"]), str(tmp_path / "out"), inputs=[str(folder)], overwrite=True).manifest
    assert m.records_read == 1519 - 50 and m.submissions_read == 50
    assert m.invariant_holds and m.examples_written > 1000
    assert m.threads == 50 and m.threads_without_submission == 0 and m.dangling_parents == 0
    t = examples(tmp_path / "out")
    assert pc.all(t["submission_found"]).as_py()
    assert pc.sum(pc.greater_equal(t["context_depth"], 2)).as_py() > 300
    assert t.filter(pc.equal(t["context_depth"], 0)).slice(0, 1)["context"][0].as_py().startswith("[title] ")


def test_bad_inputs_are_counted_not_fatal(ray_cluster, tmp_path):
    good = [orjson.dumps({"id": f"c{i}", "parent_id": "t3_s", "link_id": "t3_s", "body": f"hi {i}", "score": i,
                          "created_utc": str(1_400_000_000 + i), "subreddit": "x", "author": "a"}) + b"\n" for i in range(200)]
    bad = [b'{"id": "broken", "body": \n', b'{"id":"u8","body":"\xff\xfe","parent_id":"t3_s","link_id":"t3_s","score":1,"created_utc":1}\n',
           b'["an", "array"]\n', orjson.dumps({"id": "nofields"}) + b"\n"]
    src = tmp_path / "in"
    src.mkdir()
    zst_lines(src / "RC_2015-01.zst", good[:100] + bad + good[100:])
    # a truncated file: its readable lines count, its cut-off last line is `truncated_line`
    cut = zst_lines(tmp_path / "RC_2015-02.zst", [orjson.dumps({"id": f"d{i}", "parent_id": "t3_t", "link_id": "t3_t", "body": "x" * 40,
                                                               "score": 1, "created_utc": 1_400_000_000}) + b"\n" for i in range(20000)])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (src / "RC_2015-02.zst").write_bytes(cut.read_bytes())
    m = run_prepare(load_config(PrepareConfig, None, ["filters.min_settle_seconds=0"]), str(tmp_path / "out"), inputs=[str(src)], overwrite=True).manifest
    assert m.invariant_holds
    assert m.malformed["bad_json"] == 1 and m.malformed["invalid_utf8"] == 1
    assert m.malformed["not_an_object"] == 1 and m.malformed["missing_field:score"] == 1
    assert m.malformed.get("truncated_line", 0) <= 1
    assert [t["path"].endswith("RC_2015-02.zst") for t in m.truncated_files] == [True]
    readable = m.records_read - 204
    assert 0 < readable < 20000  # half the second file was lost, and it says so


def test_missing_path_fails_fast_with_the_path_named(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "karma_ray.cli", "prepare", str(tmp_path / "RC_1999-01.zst"), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "RC_1999-01.zst" in r.stderr
    assert time.perf_counter() - t0 < 30  # no cluster was started (ray.init alone costs seconds)
    assert not (tmp_path / "o").exists()


def test_bad_config_fails_before_any_work(tmp_path):
    src = need_shared(PUSHSHIFT / "RC_2005-12.zst")
    r = subprocess.run([sys.executable, "-m", "karma_ray.cli", "prepare", str(src), "--output", str(tmp_path / "o"), "threads.max_context_turns=-2"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "threads.max_context_turns must be >= 0" in r.stderr
    assert not (tmp_path / "o").exists()
