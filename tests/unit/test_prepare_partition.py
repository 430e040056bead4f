"""The 'partition' grouping of `karma prepare`: every thread's rows land in one partition, none is lost."""

import zlib

import pyarrow as pa

from karma_ray.data.prepare import concat_partition, split_by_thread, thread_partition
from karma_ray.data.records import RECORD_SCHEMA


def _table(link_ids: list[str]) -> pa.Table:
    rows = {name: [None] * len(link_ids) for name in RECORD_SCHEMA.names}
    rows["link_id"] = link_ids
    rows["id"] = [f"c{i}" for i in range(len(link_ids))]
    return pa.Table.from_pydict(rows, schema=RECORD_SCHEMA)


def test_partition_is_crc32_of_the_link_id():
    ids = pa.chunked_array([["t3_a", "t3_b"], ["t3_a", "t3_zz9", "t3_b"]])
    got = thread_partition(ids, 7).to_pylist()
    # by hand: crc32(b"t3_a") = 3835863883 = 7 * 547980554 + 5
    assert zlib.crc32(b"t3_a") == 3835863883 and got[0] == 5
    assert got == [zlib.crc32(k.encode()) % 7 for k in ["t3_a", "t3_b", "t3_a", "t3_zz9", "t3_b"]]


def test_split_keeps_threads_whole_and_counts_add_up():
    link_ids = [f"t3_{i % 37}" for i in range(500)] + ["__malformed__x"] * 5
    table = _table(link_ids)
    parts = split_by_thread(table, 4)
    assert len(parts) == 4 and sum(p.num_rows for p in parts) == table.num_rows
    owner: dict[str, int] = {}
    for p, part in enumerate(parts):
        assert part.schema == RECORD_SCHEMA
        for link in part["link_id"].to_pylist():
            assert owner.setdefault(link, p) == p  # one partition per thread
    assert len(owner) == 38 and len(set(owner.values())) > 1  # and the threads do spread out
    ids = sorted(i for part in parts for i in part["id"].to_pylist())
    assert ids == sorted(table["id"].to_pylist())  # no row lost or duplicated


def test_packed_pieces_round_trip_smaller():
    from karma_ray.data.prepare import pack_piece, unpack_piece

    table = _table([f"t3_{i % 7}" for i in range(2000)])
    packed = pack_piece(table)
    assert unpack_piece(packed).equals(table) and len(packed) < table.nbytes


def test_concat_partition_of_pieces_from_several_chunks():
    a, b = split_by_thread(_table(["t3_a", "t3_b", "t3_c"]), 2), split_by_thread(_table(["t3_a", "t3_d"]), 2)
    merged = [concat_partition(a[p], b[p]) for p in range(2)]
    assert sum(m.num_rows for m in merged) == 5
    big = concat_partition(*split_by_thread(_table([f"t3_{i % 97}" for i in range(25_000)]), 1))
    links = big["link_id"].to_pylist()
    assert links == sorted(links)  # above BUILD_SLICE_ROWS a partition comes sorted, to be sliced without copies
    assert concat_partition().num_rows == 0 and concat_partition().schema == RECORD_SCHEMA


def test_building_in_slices_gives_the_rows_of_one_build(monkeypatch):
    """build_stage_slices cuts a partition only between threads: same stage rows as one build_block."""
    from karma_ray.config import PrepareConfig, load_config
    from karma_ray.data import prepare
    from karma_ray.data.records import rows_to_table
    from karma_ray.data.threads import build_block
    from tests.unit.test_threads import rec

    rows = []
    for t in range(9):  # threads of 1..9 comments, interleaved as parse order would leave them
        rows.append(rec("submission", f"s{t}", link=f"t3_s{t}", score=5, title=f"T{t}"))
        rows += [rec("comment", f"c{t}_{i}", f"t3_s{t}", link=f"t3_s{t}", score=i + 1, created=10 * i) for i in range(t + 1)]
    rows = rows[::2] + rows[1::2]
    table = rows_to_table(rows)
    cfg = load_config(PrepareConfig, None, [])
    whole = build_block(table, cfg)
    monkeypatch.setattr(prepare, "BUILD_SLICE_ROWS", 7)
    key = lambda t: sorted(map(str, t.to_pylist()))  # noqa: E731
    for block in (table, table.sort_by("link_id")):  # gather-per-slice, and zero-copy slices of a sorted block
        slices = list(prepare.build_stage_slices(block, cfg))
        assert len(slices) > 3  # it did cut (54 records, 7 a slice, at thread boundaries)
        for kind in ("example", "pair", "ledger"):
            assert key(pa.concat_tables([s.table(kind) for s in slices])) == key(whole.table(kind)), kind


def test_partition_count_grows_with_the_input():
    from karma_ray.data.prepare import PARTITION_TARGET_BYTES, partition_count
    from karma_ray.data.sources import InputFile

    def zst(mib):
        return InputFile(f"RC_{mib}.zst", "jsonl", "zst", "comment", mib << 20)

    assert partition_count([zst(1)], cpus=2, configured=None) == 4  # small: 2 per CPU, at least 4
    assert partition_count([zst(1)], cpus=8, configured=None) == 16
    # 280 MiB of zstd ~ 8 x 280 MiB of JSON = 2240 MiB -> ceil(2240 / 96) = 24 partitions (a multiple of 2)
    assert PARTITION_TARGET_BYTES == 96 << 20 and partition_count([zst(200), zst(80)], 2, None) == 24
    assert partition_count([zst(200), zst(80)], 5, None) == 25  # rounded up to a multiple of 5 CPUs
    assert partition_count([zst(280)], cpus=2, configured=3) == 3


def test_stage_files_roll_and_flush_by_rows(tmp_path, monkeypatch):
    """3 tables of 50k rows, files of 100k, row groups flushed at 65,536 rows: by hand, the 2nd table
    triggers a 100k flush that fills file 000; the 3rd waits until close and makes file 001."""
    import pyarrow.parquet as pq

    from karma_ray.data.prepare import StageFiles

    files = StageFiles("abc", rows_per_file=100_000)
    chunk = pa.table({"x": pa.array(range(50_000), pa.int64())})
    files.add(tmp_path / "a", chunk)
    assert not (tmp_path / "a").exists()  # buffered: 50k < 65,536
    files.add(tmp_path / "a", chunk)
    files.add(tmp_path / "a", chunk.slice(0, 0))  # empty tables write nothing
    files.add(tmp_path / "a", chunk)
    files.add(tmp_path / "b", chunk.slice(0, 7))
    written = files.close()
    assert [(w["path"], w["rows"]) for w in written] == [
        (str(tmp_path / "a" / "part-abc-000.parquet"), 100_000),
        (str(tmp_path / "a" / "part-abc-001.parquet"), 50_000),
        (str(tmp_path / "b" / "part-abc-000.parquet"), 7),
    ]
    assert [pq.ParquetFile(w["path"]).metadata.num_rows for w in written] == [100_000, 50_000, 7]
    assert pq.ParquetFile(written[0]["path"]).metadata.num_row_groups == 1


def test_build_and_stage_writes_each_kind_once_and_a_rerun_rewrites_the_same_files(tmp_path):
    """A retried task must not add copies: file names come from the block's threads, not the attempt."""
    import pyarrow.parquet as pq

    from karma_ray.config import PrepareConfig, load_config
    from karma_ray.data import prepare
    from karma_ray.data.records import rows_to_table
    from karma_ray.data.threads import build_block
    from tests.unit.test_threads import rec

    rows = []
    for t in range(6):
        rows.append(rec("submission", f"s{t}", link=f"t3_s{t}", score=5, title=f"T{t}"))
        rows += [rec("comment", f"c{t}_{i}", f"t3_s{t}", link=f"t3_s{t}", score=i + 1, created=10 * i) for i in range(t + 2)]
    table = rows_to_table(rows)
    cfg = load_config(PrepareConfig, None, [])
    first = prepare.build_and_stage(table, cfg, str(tmp_path)).to_pylist()
    again = prepare.build_and_stage(table.take(list(range(table.num_rows))[::-1]), cfg, str(tmp_path)).to_pylist()
    assert first == again  # same names, same rows: the second run overwrote the first
    on_disk = sorted(str(p) for p in tmp_path.rglob("*.parquet"))
    assert on_disk == sorted(f["path"] for f in first)
    whole = build_block(table, cfg)
    for kind, folder in (("example", f"{prepare.STAGING}/example"), ("pair", "pairs"), ("ledger", "ledger")):
        got = sum(pq.ParquetFile(p).metadata.num_rows for p in on_disk if f"/{folder}/" in p)
        assert got == whole.table(kind).num_rows > 0, kind
    assert all("/split=" in p for p in on_disk if "/ledger/" not in p)  # examples and pairs by split


def test_exchange_rounds_gather_tables_and_keep_every_row(monkeypatch):
    """5 tables with a round every 2 tables' bytes -> rounds of 2, 2, 1 -> 3 rounds x 3 pieces."""
    from karma_ray.data import prepare

    tables = [_table([f"t3_{(7 * k + i) % 11}" for i in range(40)]) for k in range(5)]
    monkeypatch.setattr(prepare, "EXCHANGE_ROUND_BYTES", 2 * tables[0].nbytes)
    pieces = [prepare.unpack_piece(p) for p in prepare.exchange_rounds(iter(tables), 3)]
    assert len(pieces) == 9
    assert [sum(pieces[3 * r + p].num_rows for p in range(3)) for r in range(3)] == [80, 80, 40]
    owner: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        for link in piece["link_id"].to_pylist():
            assert owner.setdefault(link, i % 3) == i % 3  # piece i belongs to partition i % 3
    assert sorted(i for p in pieces for i in p["id"].to_pylist()) == sorted(i for t in tables for i in t["id"].to_pylist())


def test_subreddit_z_per_subreddit_with_pooled_fallback_and_zero_std():
    from karma_ray.data.prepare import add_subreddit_z

    stats = {"a": {"mean": 1.0, "std": 2.0}, "flat": {"mean": 0.5, "std": 0.0}, "__all__": {"mean": 0.25, "std": 4.0}}
    table = pa.table({"subreddit": ["a", "flat", "unseen", None, "a"], "log_score": [3.0, 2.0, 1.25, -0.75, 1.0]})
    got = add_subreddit_z(table, stats)["subreddit_z"].to_pylist()
    # by hand: (3-1)/2 = 1; 2-0.5 = 1.5 (std 0: centred only); (1.25-0.25)/4 = 0.25; (-0.75-0.25)/4 = -0.25; 0
    assert got == [1.0, 1.5, 0.25, -0.25, 0.0]
