"""Input discovery, chunking and the byte streams (zstd 2 GiB window, gzip, truncation, UTF-8)."""

import gzip
import json

import orjson
import pytest
import zstandard

from karma_ray.data.sources import (
    InputError,
    convokit_as_pushshift,
    iter_chunks,
    iter_range_chunks,
    plain_ranges,
    resolve_inputs,
)
from tests.conftest import CONVOKIT, need_shared


def zst(path, data: bytes):
    """Like a Pushshift dump: streamed (no content size in the header) with a 2 GiB window."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31, write_content_size=False)
    with open(path, "wb") as fh, zstandard.ZstdCompressor(compression_params=params).stream_writer(fh) as w:
        w.write(data)
    return path


def records(n, pad=60):
    return b"".join(orjson.dumps({"id": f"c{i}", "body": "é" * pad}) + b"\n" for i in range(n))


def test_missing_path_unknown_format_and_empty_glob_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist: .*nope.zst"):
        resolve_inputs([str(tmp_path / "nope.zst")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unknown input format: .*notes.txt"):
        resolve_inputs([str(tmp_path / "notes.txt")])
    with pytest.raises(InputError, match="no files match"):
        resolve_inputs([str(tmp_path / "RC_*.zst")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Reddit dump files"):
        resolve_inputs([str(tmp_path / "empty")])


def test_formats_kinds_globs_and_folders(tmp_path):
    zst(tmp_path / "RC_2015-01.zst", b"")
    zst(tmp_path / "RS_2015-01.zst", b"")
    (tmp_path / "more.jsonl.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "synth_summary.json").write_text("{}")  # metadata beside the dumps: not an input
    got = {(f.path.split("/")[-1], f.format, f.compression, f.kind_hint) for f in resolve_inputs([str(tmp_path)])}
    assert got == {
        ("RC_2015-01.zst", "pushshift", "zst", "comment"),
        ("RS_2015-01.zst", "pushshift", "zst", "submission"),
        ("more.jsonl.gz", "jsonl", "gz", "comment"),
    }
    assert len(resolve_inputs([str(tmp_path / "R?_*.zst")])) == 2


def test_chunks_are_newline_aligned_and_lose_nothing(tmp_path):
    data = records(3000)  # multi-byte characters everywhere: a chunk cut inside one must not corrupt it
    f = resolve_inputs([str(zst(tmp_path / "RC_x.zst", data))])[0]
    chunks = list(iter_chunks(f, chunk_bytes=10_000))
    assert len(chunks) > 10
    assert all(c.data.endswith(b"\n") for c in chunks)
    assert b"".join(c.data for c in chunks) == data
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert not any(c.truncated_tail for c in chunks)


def test_default_zstd_window_refuses_pushshift_files_but_we_read_them(tmp_path):
    path = zst(tmp_path / "RC_big_window.zst", records(50))
    if b"".join(c.data for c in iter_chunks(resolve_inputs([str(path)])[0], 1 << 20)) != records(50):
        pytest.fail("round trip failed")
    raw = path.read_bytes()
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompressobj().decompress(raw)


def test_truncated_zstd_yields_what_is_readable_then_a_flagged_tail(tmp_path):
    data = records(20000)
    path = tmp_path / "RC_cut.zst"
    zst(path, data)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    chunks = list(iter_chunks(resolve_inputs([str(path)])[0], chunk_bytes=64_000))
    tail = chunks[-1]
    assert tail.truncated_tail and "truncated" in tail.error
    assert all(not c.truncated_tail for c in chunks[:-1])
    got = b"".join(c.data for c in chunks)
    assert 0 < len(got) < len(data) and data.startswith(got)


def test_corrupt_zstd_is_reported_not_raised(tmp_path):
    path = tmp_path / "RC_bad.zst"
    good = zstandard.ZstdCompressor().compress(records(100))
    path.write_bytes(good[:20] + b"\x00" * 50 + good[70:])
    chunks = list(iter_chunks(resolve_inputs([str(path)])[0], 1 << 20))
    assert chunks[-1].truncated_tail and chunks[-1].error


def test_truncated_gzip_is_flagged(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(records(5000))[:-200])
    chunks = list(iter_chunks(resolve_inputs([str(path)])[0], 1 << 20))
    assert chunks[-1].truncated_tail and "gzip" in chunks[-1].error


def test_multi_frame_zstd_is_read_whole(tmp_path):
    a, b = records(10), records(7)
    path = tmp_path / "RC_frames.zst"
    c = zstandard.ZstdCompressor()
    path.write_bytes(c.compress(a) + c.compress(b))
    assert b"".join(x.data for x in iter_chunks(resolve_inputs([str(path)])[0], 1 << 20)) == a + b


@pytest.mark.parametrize("n_ranges", [2, 3, 7])
def test_byte_ranges_of_a_plain_file_read_every_line_once(tmp_path, n_ranges):
    data = records(2000, pad=13)
    path = tmp_path / "c.jsonl"
    path.write_bytes(data)
    f = resolve_inputs([str(path)])[0]
    ranges = plain_ranges(f, chunk_bytes=4096, n_ranges=n_ranges)
    assert len(ranges) == n_ranges
    got = b"".join(c.data for s, e in ranges for c in iter_range_chunks(f, s, e, 4096))
    assert got == data


def test_convokit_sample_becomes_pushshift_objects():
    folder = need_shared(CONVOKIT)
    out = b"".join(convokit_as_pushshift(folder)).splitlines()
    objs = [json.loads(x) for x in out]
    n_lines = sum(1 for line in (folder / "utterances.jsonl").open("rb") if line.strip())
    assert len(objs) == n_lines == 1519
    posts = [o for o in objs if "title" in o]
    replies = [o for o in objs if "parent_id" in o]
    assert len(posts) == 50 and len(replies) == 1519 - 50
    assert all(o["link_id"].startswith("t3_") and o["parent_id"][:3] in ("t1_", "t3_") for o in replies)
    assert all(o["subreddit"] == "Cornell" for o in objs)
    assert posts[0]["title"] == "oh look.. a picture!"
