"""`karma prepare` on the synthetic corpus: every count against the planted ground truth, the
planted signal visible in the labels, and the other input paths (byte-range split plain JSONL,
Parquet) giving the same examples as the .zst dumps."""

import json

import orjson
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import zstandard

from karma_ray.config import PrepareConfig, load_config
from karma_ray.data.prepare import run_prepare
from karma_ray.data.synth import topic_of_text, write_synthetic_corpus
from tests.conftest import REPO

pytestmark = pytest.mark.ray
SYNTH_CONFIG = REPO / "configs" / "data" / "synthetic.yaml"


def cfg(*overrides):
    return load_config(PrepareConfig, SYNTH_CONFIG, ["ray.num_cpus=null", "ray.object_store_memory_gb=null", *overrides])


def examples(out):
    return pads.dataset(out / "examples", format="parquet", partitioning="hive").to_table()


@pytest.fixture(scope="module")
def synthetic(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    truth = write_synthetic_corpus(root / "corpus", 6000, seed=3)
    manifest = run_prepare(cfg(), str(root / "prepared"), inputs=[str(root / "corpus")], overwrite=True).manifest
    return root, truth, manifest


def test_every_count_matches_the_planted_ground_truth(synthetic):
    _, truth, m = synthetic
    assert m.records_read == truth.comments_written
    assert m.records_malformed == truth.malformed_lines
    assert m.malformed.get("invalid_utf8", 0) == truth.invalid_utf8_lines
    dropped = dict(m.dropped)  # the manifest is shared by the module's tests: do not mutate it
    moderator = dropped.pop("distinguished", 0) + dropped.pop("stickied", 0)
    assert moderator == truth.moderator_comments  # synth marks moderator posts distinguished or stickied
    expected = {
        "deleted": truth.deleted_bodies,
        "removed": truth.removed_bodies,
        "bot": truth.bot_comments,
        "empty": truth.empty_bodies,
        "too_long": truth.overlong_bodies,
        "unsettled_score": truth.unsettled_scores,
        "duplicate": truth.duplicate_lines,
    }
    assert dropped == {k: v for k, v in expected.items() if v}
    assert m.examples_written == truth.clean_comments
    assert m.dangling_parents == truth.dangling_parents
    assert m.submissions_read == truth.submissions_written
    assert m.invariant_holds


def test_planted_text_and_metadata_signals_survive_into_the_labels(synthetic):
    root, _, _ = synthetic
    t = examples(root / "prepared").to_pylist()
    on, off = [], []
    for r in t:
        title = r["context"].split("\n", 1)[0]
        if not title.startswith("[title] ") or topic_of_text(r["reply"]) is None:
            continue
        (on if topic_of_text(r["reply"]) == topic_of_text(title) else off).append(r["thread_percentile"])
    assert len(on) > 500 and len(off) > 300
    assert sum(on) / len(on) - sum(off) / len(off) > 0.1  # on-topic replies rank higher in their thread
    early = [r["sibling_percentile"] for r in t if r["seconds_since_parent"] is not None and r["seconds_since_parent"] < 600 and r["num_siblings"]]
    late = [r["sibling_percentile"] for r in t if r["seconds_since_parent"] is not None and r["seconds_since_parent"] > 4 * 3600 and r["num_siblings"]]
    assert sum(early) / len(early) - sum(late) / len(late) > 0.05  # early replies score higher among siblings


def _decompressed(path):
    d = zstandard.ZstdDecompressor(max_window_size=2**31)
    with open(path, "rb") as fh:
        return d.stream_reader(fh).read()


def test_plain_jsonl_split_into_byte_ranges_gives_the_same_examples(synthetic, tmp_path):
    root, truth, m = synthetic
    src = tmp_path / "jsonl"
    src.mkdir()
    for f in sorted((root / "corpus").glob("R?_*.zst")):
        (src / (f.stem + ".jsonl")).write_bytes(_decompressed(f))
    # 1 MiB chunks: each multi-MiB comment file is read by several range tasks in parallel
    m2 = run_prepare(cfg("read.chunk_mib=1"), str(tmp_path / "out"), inputs=[str(src)], overwrite=True).manifest
    assert (m2.records_read, m2.records_malformed, m2.dropped, m2.examples_written, m2.pairs_written) == (
        m.records_read, m.records_malformed, m.dropped, m.examples_written, m.pairs_written)
    a, b = examples(root / "prepared"), examples(tmp_path / "out")
    assert sorted(a["id"].to_pylist()) == sorted(b["id"].to_pylist())


@pytest.mark.parametrize("shuffle", ["partition", "hash"])
def test_parquet_input_with_pushshift_fields(synthetic, tmp_path, shuffle):
    """Parquet inputs are read by streaming tasks under 'partition' and by Ray Data's read_parquet under
    the Ray Data shuffles: both give the .zst run's examples."""
    root, truth, m = synthetic
    rows = []
    for f in sorted((root / "corpus").glob("RC_*.zst")):
        for line in _decompressed(f).splitlines():
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                rows.append({k: obj.get(k) for k in ("id", "parent_id", "link_id", "subreddit", "author", "body", "score", "distinguished", "stickied")}
                            | {"created_utc": str(obj.get("created_utc")), "retrieved_on": obj.get("retrieved_on")})
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pq" / "RC_comments.parquet")
    inputs = [str(tmp_path / "pq" / "RC_comments.parquet"), *map(str, sorted((root / "corpus").glob("RS_*.zst")))]
    m3 = run_prepare(cfg(f"shuffle={shuffle}"), str(tmp_path / "out"), inputs=inputs, overwrite=True).manifest
    assert m3.records_read == len(rows)
    assert m3.examples_written == m.examples_written == truth.clean_comments
    assert (m3.pairs_written, m3.splits) == (m.pairs_written, m.splits)
    assert m3.invariant_holds
    a, b = examples(root / "prepared"), examples(tmp_path / "out")
    assert sorted(zip(a["id"].to_pylist(), a["context"].to_pylist())) == sorted(zip(b["id"].to_pylist(), b["context"].to_pylist()))


def test_manifest_json_is_complete_and_consistent(synthetic):
    root, _, m = synthetic
    data = json.loads((root / "prepared" / "manifest.json").read_text())
    assert data["records_read"] == data["records_malformed"] + sum(data["dropped"].values()) + data["examples_written"]
    assert sum(data["splits"].values()) == data["examples_written"] and set(data["splits"]) == {"train", "val", "test"}
    assert data["config"]["threads"]["max_context_turns"] == 4
    assert data["timings"]["total"] > 0
    report = root / "prepared" / "report.png"
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report.stat().st_size > 10_000
    assert "![prepare report](report.png)" in (root / "prepared" / "summary.md").read_text()
