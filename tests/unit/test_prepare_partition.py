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


def test_concat_partition_of_pieces_from_several_chunks():
    a, b = split_by_thread(_table(["t3_a", "t3_b", "t3_c"]), 2), split_by_thread(_table(["t3_a", "t3_d"]), 2)
    merged = [concat_partition(a[p], b[p]) for p in range(2)]
    assert sum(m.num_rows for m in merged) == 5
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
    for staging_write in ("fused", "streamed"):  # sort-then-slice, and gather-per-slice
        slice_cfg = load_config(PrepareConfig, None, [f"staging_write={staging_write}"])
        slices = list(prepare.build_stage_slices(table, slice_cfg))
        assert len(slices) > 3  # it did cut (54 records, 7 a slice, at thread boundaries)
        assert key(pa.concat_tables(slices)) == key(whole), staging_write


def test_partition_count_grows_with_the_input():
    from karma_ray.data.prepare import PARTITION_TARGET_BYTES, partition_count
    from karma_ray.data.sources import InputFile

    def zst(mib):
        return InputFile(f"RC_{mib}.zst", "jsonl", "zst", "comment", mib << 20)

    assert partition_count([zst(1)], cpus=2, configured=None) == 4  # small: 2 per CPU, at least 4
    assert partition_count([zst(1)], cpus=8, configured=None) == 16
    # 280 MiB of zstd ~ 8 x 280 MiB of JSON = 2240 MiB -> ceil(2240 / 256) = 9 partitions
    assert PARTITION_TARGET_BYTES == 256 << 20 and partition_count([zst(200), zst(80)], 2, None) == 9
    assert partition_count([zst(280)], cpus=2, configured=3) == 3
