"""`karma prepare`: Reddit dumps -> reward-model examples and sibling pairs, on Ray.

    1-2. read+parse  Ray tasks (streaming generators), one per file, byte range of a plain file,
                     or chunk shard of a big compressed one: decompress, cut newline-aligned
                     chunks, parse, apply record filters; blocks go to the object store
                                                                   (sources.py, records.py)
    3.   group       whole threads meet in one block. Default ('partition'): the parse tasks split
                     every chunk by a stable hash of link_id, and one Ray task per partition
                     concatenates its pieces, a single all-to-all exchange through the object store.
                     Alternatives: Ray Data's sort shuffle or hash shuffle by link_id
    4.   build       Ray Data map over whole blocks: contexts, labels, pairs, ledger  (threads.py)
    5.   stage       Parquet partitioned by output kind
    6.   count       Ray tasks over staged ledger files -> the manifest's counts
    7.   finish      subreddit z-scores from TRAIN statistics; examples/, pairs/, ledger/ by split

Why read+parse are plain Ray tasks feeding Ray Data, not a Ray Data read operator (measured on
2 CPUs, 1M comments): as an operator upstream of an all-to-all shuffle, Ray Data's scheduler ran
the read tasks one at a time (37 s of 67 s), and with a separate parse operator a back-pressured
read task kept its CPU slot. Submitted as tasks, every file is read at once.

Why the default grouping is our own exchange rather than a Ray Data shuffle (2 CPUs, 1M comments):
the sort shuffle cost ~10 s of a 30 s main pass (sampling, sorting and merging a key we only need
grouped, not ordered), while cutting each parsed chunk into partitions costs well under a second in
the tasks that already hold it; building and writing stay on Ray Data.

Every input line ends as exactly one example row or one ledger row, so
`records_read == records_malformed + sum(dropped) + examples_written` is a count of written rows,
not of side-channel counters; the manifest states it and prepare checks it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from karma_ray.config import PrepareConfig, save_resolved, to_dict
from karma_ray.data import records, sources, threads
from karma_ray.data.labels import zscore

MANIFEST = "manifest.json"


class OutputExistsError(FileExistsError):
    pass


def thread_partition(link_ids: pa.Array | pa.ChunkedArray, n_partitions: int) -> pa.Array:
    """Partition index in [0, n_partitions) of every row: crc32 of its link_id (stable across processes,
    unlike Python's salted hash()), computed once per distinct thread of the chunk."""
    encoded = pc.dictionary_encode(link_ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    keys = [zlib.crc32(k.encode()) % n_partitions for k in encoded.dictionary.to_pylist()]
    return pc.take(pa.array(keys, pa.int32()), encoded.indices)


def split_by_thread(table: pa.Table, n_partitions: int) -> list[pa.Table]:
    """`table` cut into n_partitions tables (some maybe empty); all rows of a thread land in the same one."""
    part = thread_partition(table["link_id"], n_partitions)
    return [table.filter(pc.equal(part, p)) for p in range(n_partitions)]


def concat_partition(*pieces: pa.Table) -> pa.Table:
    """Ray task body: one partition's pieces from every parse task -> one block of whole threads."""
    return pa.concat_tables(pieces) if pieces else records.RECORD_SCHEMA.empty_table()


def read_records(f: sources.InputFile, plan: tuple[str, int, int], chunk_bytes: int, filters: Any,
                 n_partitions: int = 0) -> Iterator[pa.Table]:
    """Ray task body (streaming generator): decompress, parse and filter one file / byte range /
    chunk shard, yielding RECORD_SCHEMA blocks chunk by chunk (plus a marker row when the file
    ended early). With n_partitions > 0 each chunk is yielded as n_partitions blocks, block i of
    the stream belonging to partition i % n_partitions (split_by_thread)."""
    kind, a, b = plan
    if kind == "range":
        chunks = sources.iter_range_chunks(f, a, b, chunk_bytes)
    elif kind == "shard":
        chunks = sources.iter_chunks(f, chunk_bytes, shard=a, n_shards=b)
    else:
        chunks = sources.iter_chunks(f, chunk_bytes)
    for c in chunks:
        info = records.ChunkInfo(c.source, c.index, c.kind_hint)
        table = records.parse_and_filter(c.data, info, filters, truncated_tail=c.truncated_tail)
        if c.truncated_tail:
            table = pa.concat_tables([table, _truncation_row(info, c.error)])
        # explicit loops, not `yield from`: Ray drives a streaming generator with send(), which a
        # delegated list iterator does not have
        for piece in split_by_thread(table, n_partitions) if n_partitions else [table]:
            yield piece


def read_parquet_records(path: str, batch_rows: int, filters: Any, n_partitions: int) -> Iterator[pa.Table]:
    """Ray task body (streaming generator): a Parquet input with Pushshift field names, batch by batch,
    through parse_parquet_batch, split like read_records."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        table = pa.Table.from_batches([batch])
        table = table.append_column("__source", pa.repeat(pa.scalar(path), table.num_rows))
        for piece in split_by_thread(parse_parquet_batch(table, filters), n_partitions):
            yield piece


def _truncation_row(info: records.ChunkInfo, error: str | None) -> pa.Table:
    """A ledger-only marker that a file ended early (record_kind 'file_event', not a record)."""
    row = records.malformed_row(info, "file_truncated", error or "")
    row["record_kind"] = "file_event"
    return records.rows_to_table([row])


def configure_data_context(cfg: PrepareConfig) -> None:
    """Ray Data settings for this run, resolved once at setup."""
    from ray.data.context import DataContext, ShuffleStrategy

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars
    # Per-operator reservations split a small cluster between operators that can only run one
    # after another around an all-to-all shuffle; let each use the whole cluster in turn.
    ctx.op_resource_reservation_enabled = False
    if cfg.shuffle == "sort":
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    elif cfg.shuffle == "hash":
        ctx.shuffle_strategy = ShuffleStrategy.SHUFFLE_V2
        # Aggregators only hold partitions until all input is read, and by default reserve up
        # to 25% of the CPUs for it, which starves the tasks that feed them on a small cluster.
        ctx.hash_shuffle_operator_actor_num_cpus_per_partition_override = 0.0


def tasks_per_file(files: list[sources.InputFile], cpus: int, chunk_bytes: int, max_tasks: int) -> dict[str, int]:
    """Share big files between read tasks when there are fewer files than CPUs."""
    big = [f for f in files if f.size_bytes * (8 if f.compression != "none" else 1) > 2 * chunk_bytes]
    if not big:
        return {}
    n = max(1, min(max_tasks, cpus // len(big)))
    return {f.path: n for f in big}


def parse_parquet_batch(batch: pa.Table, filters: Any) -> pa.Table:
    """Parquet inputs with Pushshift field names go through the same parser (as JSON lines), so
    every source is normalized and checked by one code path."""
    import orjson

    source = "parquet"
    if "__source" in batch.column_names:
        source = batch["__source"][0].as_py() if batch.num_rows else source
        batch = batch.drop_columns(["__source"])
    lines = b"".join(orjson.dumps(r, default=str) + b"\n" for r in batch.to_pylist())
    info = records.ChunkInfo(source, 0, sources.kind_hint_for(source))
    return records.parse_and_filter(lines, info, filters)


def build_stage_batch(batch: pa.Table, cfg: PrepareConfig) -> pa.Table:
    return threads.build_block(batch, cfg)


BUILD_SLICE_ROWS = 20_000  # records per build_block call inside one partition (whole threads)


def build_stage_slices(block: pa.Table, cfg: PrepareConfig) -> Iterator[pa.Table]:
    """A whole partition -> its stage rows, built and yielded in slices of whole threads of about
    BUILD_SLICE_ROWS records. build_block turns its logic columns into Python lists; a slice at a
    time keeps that from growing with the partition.

    With staging_write="streamed" only the link_id column is sorted and each slice gathers its own
    rows (`take`), so the partition is never copied whole (it stays in the object store): flat memory.
    Otherwise the partition is sorted once and sliced without copies: 10-25% faster to build (measured
    on a 108k-record partition), at the cost of one partition-sized copy."""
    if block.num_rows <= BUILD_SLICE_ROWS:
        yield threads.build_block(block, cfg)
        return
    if cfg.staging_write == "streamed":
        order = pc.sort_indices(block["link_id"])  # (n,) row order by thread
        links = block["link_id"].take(order)
        take = lambda a, n: block.take(order.slice(a, n))  # noqa: E731
    else:
        block = block.sort_by([("link_id", "ascending")])
        links = block["link_id"]
        take = block.slice
    links = links.combine_chunks()
    # position i (in thread order) starts a new thread where link_id changes; slices are cut only there
    starts = np.flatnonzero(np.asarray(pc.not_equal(links[1:], links[:-1]).to_numpy(zero_copy_only=False))) + 1
    cuts = [0]
    for target in range(BUILD_SLICE_ROWS, block.num_rows, BUILD_SLICE_ROWS):
        k = int(np.searchsorted(starts, max(target, cuts[-1] + 1)))
        if k < len(starts):
            cuts.append(int(starts[k]))
    cuts.append(block.num_rows)  # strictly increasing: each cut is a thread start after the previous cut
    for a, b in zip(cuts[:-1], cuts[1:]):
        yield threads.build_block(take(a, b - a), cfg)


STREAMED_FILE_BYTES = 64 << 20  # staging file size of staging_write="streamed"


def partition_count(files: list[sources.InputFile], cpus: int, configured: int | None) -> int:
    """Partitions of the 'partition' grouping: the configured number, else at least 2 per CPU (and 4),
    and more for big inputs so a partition stays near PARTITION_TARGET_BYTES of input JSON and peak
    memory stays flat as the corpus grows."""
    if configured:
        return configured
    estimated = sum(f.size_bytes * (COMPRESSION_RATIO_ESTIMATE if f.compression != "none" else 1) for f in files)
    return max(default_partitions(cpus), -(-estimated // PARTITION_TARGET_BYTES))


def default_partitions(cpus: int) -> int:
    """Partitions when neither the config nor the input size asks for more: 2 per CPU, at least 4."""
    return max(4, 2 * cpus)


PARTITION_TARGET_BYTES = 256 << 20
COMPRESSION_RATIO_ESTIMATE = 8  # Pushshift JSON under zstd/gzip: ~6-10x (as tasks_per_file assumes)


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------


@dataclass
class Manifest:
    inputs: list[dict]
    records_read: int = 0  # comment records (non-blank lines of comment sources)
    records_malformed: int = 0
    malformed: dict[str, int] = field(default_factory=dict)  # reason -> comment lines
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> comments
    examples_written: int = 0
    pairs_written: int = 0
    splits: dict[str, int] = field(default_factory=dict)  # split -> examples
    pair_splits: dict[str, int] = field(default_factory=dict)
    dangling_parents: int = 0
    threads: int = 0
    threads_without_submission: int = 0
    submissions_read: int = 0
    submissions_malformed: int = 0
    submissions_duplicate: int = 0
    truncated_files: list[dict] = field(default_factory=list)
    subreddit_stats: dict[str, dict] = field(default_factory=dict)  # train log_score mean/std/count
    timings: dict[str, float] = field(default_factory=dict)
    rows_per_second: float = 0.0
    invariant_holds: bool = False
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    def check_invariant(self) -> bool:
        return self.records_read == self.records_malformed + sum(self.dropped.values()) + self.examples_written

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=False)


def _accumulate(manifest: Manifest, groups: list[dict]) -> None:
    """Ledger aggregates (`ledger_counts` rows) -> manifest counts."""
    for g in groups:
        kind, outcome, count = g["record_kind"], g["outcome"], int(g["count_all"])
        if kind == records.COMMENT:
            manifest.dropped[outcome] = manifest.dropped.get(outcome, 0) + count
        elif kind == records.MALFORMED_COMMENT:
            manifest.malformed[outcome] = manifest.malformed.get(outcome, 0) + count
        elif kind == records.SUBMISSION:
            manifest.submissions_read += count
            if outcome == "duplicate":
                manifest.submissions_duplicate += count
        elif kind == records.MALFORMED_SUBMISSION:
            manifest.submissions_malformed += count
            manifest.submissions_read += count
        elif kind == "thread":
            split = g["split"]
            manifest.threads += count
            if outcome == "thread_without_submission":
                manifest.threads_without_submission += count
            manifest.dangling_parents += int(g["n_dangling_sum"] or 0)
            n_ex, n_pairs = int(g["n_examples_sum"] or 0), int(g["n_pairs_sum"] or 0)
            manifest.splits[split] = manifest.splits.get(split, 0) + n_ex
            manifest.pair_splits[split] = manifest.pair_splits.get(split, 0) + n_pairs
    manifest.records_malformed = sum(manifest.malformed.values())
    manifest.examples_written = sum(manifest.splits.values())
    manifest.pairs_written = sum(manifest.pair_splits.values())
    manifest.records_read = manifest.records_malformed + sum(manifest.dropped.values()) + manifest.examples_written


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def prepare_output_dir(output: str, overwrite: bool) -> Path:
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"output directory is not empty: {out} (pass --overwrite to replace it)")
        if not (out / MANIFEST).exists() and not (out / "config.yaml").exists():
            raise OutputExistsError(f"refusing to overwrite {out}: it does not look like a prepare output")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_prepare(inputs: list[str], output: str, cfg: PrepareConfig, overwrite: bool = False) -> Manifest:
    """Validate inputs, run the pipeline, write outputs and manifest.json; returns the manifest."""
    t_start = time.perf_counter()
    files = sources.resolve_inputs(inputs, cfg.read.format)  # errors before any cluster work
    out = prepare_output_dir(output, overwrite)
    save_resolved(cfg, out)

    import ray

    from karma_ray.ray_utils import init_ray

    timings: dict[str, float] = {}
    init_ray(cfg.ray)
    configure_data_context(cfg)  # before any dataset exists: datasets copy the context when created
    timings["ray_init"] = time.perf_counter() - t_start

    text_files = [f for f in files if f.format != "parquet"]
    parquet_files = [f for f in files if f.format == "parquet"]
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    chunk_bytes = cfg.read.chunk_mib << 20

    t_main = time.perf_counter()
    if cfg.shuffle == "partition":
        grouped = _read_partitioned(text_files, parquet_files, cfg, cpus, chunk_bytes)
        build = build_stage_slices  # a partition is big: built and handed on in slices
    else:
        grouped = _read_shuffled(text_files, parquet_files, cfg, cpus, chunk_bytes)
        build = build_stage_batch
    # 4. build
    stage_ds = grouped.map_batches(build, batch_size=None, batch_format="pyarrow", fn_kwargs={"cfg": cfg})
    staging = out / "_staging"
    if cfg.staging_write == "streamed":
        # A bytes target makes Ray Data bundle the build's output blocks for separate write tasks (no
        # fusion: Ray 2.60 plan_write_op), so no task holds a whole partition's output.
        stage_ds.write_parquet(str(staging), partition_cols=["output"], min_bytes_per_file=STREAMED_FILE_BYTES)
    else:
        stage_ds.write_parquet(str(staging), partition_cols=["output"], min_rows_per_file=cfg.rows_per_file)
    timings["read_parse_group_build"] = time.perf_counter() - t_main
    ray_stats = stage_ds.stats()

    manifest = Manifest(inputs=[_input_info(f) for f in files], config=to_dict(cfg), versions=_versions())

    # 6. count: one task per staged ledger file, merged here. Plain Ray tasks rather than Ray Data
    # aggregates: each Ray Data execution costs seconds of fixed start-up, these cost milliseconds.
    t0 = time.perf_counter()
    ledger_files = _parquet_files(staging / "output=ledger")
    example_files = _parquet_files(staging / "output=example")
    pair_files = _parquet_files(staging / "output=pair")
    count_task = ray.remote(ledger_counts)
    moments_task = ray.remote(train_subreddit_moments)
    counted = ray.get([count_task.remote(str(p)) for p in ledger_files])
    moments = ray.get([moments_task.remote(str(p)) for p in example_files])
    groups = [g for part in counted for g in part["groups"]]
    _accumulate(manifest, groups)
    manifest.truncated_files = [e for part in counted for e in part["truncated"]]
    manifest.subreddit_stats = merge_moments(moments)
    timings["count"] = time.perf_counter() - t0

    # 7. finish: z-scores, per-kind columns, split folders; one task per staged file.
    t0 = time.perf_counter()
    finish = ray.remote(finish_file)
    jobs = [finish.remote(str(p), str(out / "examples"), "example", i, manifest.subreddit_stats) for i, p in enumerate(example_files)]
    jobs += [finish.remote(str(p), str(out / "pairs"), "pair", i, None) for i, p in enumerate(pair_files)]
    jobs += [finish.remote(str(p), str(out / "ledger"), "ledger", i, None) for i, p in enumerate(ledger_files)]
    ray.get(jobs)
    shutil.rmtree(staging, ignore_errors=True)
    timings["finish"] = time.perf_counter() - t0

    written = count_rows(out / "examples")
    if written != manifest.examples_written:
        raise RuntimeError(f"examples on disk ({written}) != examples counted in the ledger ({manifest.examples_written})")
    timings["total"] = time.perf_counter() - t_start
    manifest.timings = {k: round(v, 3) for k, v in timings.items()}
    total_records = manifest.records_read + manifest.submissions_read
    manifest.rows_per_second = round(total_records / max(timings["read_parse_group_build"], 1e-9), 1)
    manifest.invariant_holds = manifest.check_invariant()
    (out / MANIFEST).write_text(manifest.to_json())
    (out / "ray_data_stats.txt").write_text(str(ray_stats))
    from karma_ray.data.report import plot_prepare_report

    report = plot_prepare_report(out, manifest.__dict__)
    summary = render_summary(manifest, out)
    if report is not None:
        summary += f"\n![prepare report]({report.name})\n"
    (out / "summary.md").write_text(summary)
    return manifest


def _read_partitioned(text_files: list, parquet_files: list, cfg: PrepareConfig, cpus: int, chunk_bytes: int):
    """1-3. read + parse + group ('partition'): a Dataset whose every block holds whole threads."""
    import ray

    n_partitions = partition_count(text_files + parquet_files, cpus, cfg.shuffle_partitions)
    # 1-2. Each read task yields every parsed chunk already cut into n_partitions pieces (block i of
    # a stream is partition i % n).
    generators = _submit_reads(text_files, cfg, cpus, chunk_bytes, n_partitions)
    parquet_task = ray.remote(num_returns="streaming")(read_parquet_records)
    generators += [parquet_task.remote(f.path, 65_536, cfg.filters, n_partitions) for f in parquet_files]
    pieces: list[list] = [[] for _ in range(n_partitions)]
    for gen in generators:
        for i, ref in enumerate(gen):
            pieces[i % n_partitions].append(ref)
    # 3. The exchange: one task per partition concatenates its pieces (refs passed as arguments, so Ray
    # moves them to the task; the driver never holds the data).
    concat = ray.remote(concat_partition)
    merged = [concat.remote(*refs) for refs in pieces]
    del pieces, generators  # the pieces are freed once their partition is concatenated
    return ray.data.from_arrow_refs(merged)


def _submit_reads(text_files: list, cfg: PrepareConfig, cpus: int, chunk_bytes: int, n_partitions: int) -> list:
    """1-2. read + parse: one Ray task per file, byte range or chunk shard, all submitted at once; each
    streams RECORD_SCHEMA blocks (a streaming generator) into the object store. Measured on 2 CPUs / 1M
    comments: the same tasks as a Ray Data read operator ran one at a time once a shuffle was downstream
    (its scheduler split 2 CPUs between operators), 2x slower end to end."""
    import ray

    shares = tasks_per_file(text_files, cpus, chunk_bytes, cfg.read.max_tasks_per_file)
    read_task = ray.remote(num_returns="streaming")(read_records)
    return [
        read_task.remote(f, plan, chunk_bytes, cfg.filters, n_partitions)
        for f in text_files
        for plan in sources.read_plan(f, chunk_bytes, shares.get(f.path, 1))
    ]


def _read_shuffled(text_files: list, parquet_files: list, cfg: PrepareConfig, cpus: int, chunk_bytes: int):
    """1-3. read + parse + group ('sort' / 'hash'): Ray Data shuffles the parsed records by link_id."""
    import ray

    parts = []
    if text_files:
        # 1-2. read + parse; the blocks go from the object store to Ray Data
        block_refs = [ref for gen in _submit_reads(text_files, cfg, cpus, chunk_bytes, 0) for ref in gen]
        parts.append(ray.data.from_arrow_refs(block_refs))
    if parquet_files:
        pq = ray.data.read_parquet([f.path for f in parquet_files], include_paths=True)
        pq = pq.rename_columns({"path": "__source"}) if "path" in (pq.schema().names or []) else pq
        parts.append(pq.map_batches(parse_parquet_batch, batch_format="pyarrow", fn_kwargs={"filters": cfg.filters}))
    record_ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]

    # 3. group: whole threads must meet in one block. Both strategies give the guarantee Ray's own
    # groupby().map_groups() relies on (ray/data/grouped_data.py, Ray 2.60): after a keyed
    # repartition (hash) or a sort (range partitions), a block holds whole groups. Processing a
    # whole block per call avoids a Python call per thread.
    if cfg.shuffle == "sort":
        return record_ds.sort("link_id")  # as many range partitions as input blocks
    # No sort=True: build_block sorts its block by link_id itself.
    n_partitions = cfg.shuffle_partitions or default_partitions(cpus)
    return record_ds.repartition(n_partitions, keys=["link_id"])


def _parquet_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.parquet")) if folder.exists() else []


def ledger_counts(path: str) -> dict:
    """Ray task: one staged ledger file -> counts by (record_kind, outcome, split) and truncation events."""
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["record_kind", "outcome", "split", "n_examples", "n_pairs", "n_dangling", "source", "detail"])
    agg = t.group_by(["record_kind", "outcome", "split"]).aggregate(
        [([], "count_all"), ("n_examples", "sum"), ("n_pairs", "sum"), ("n_dangling", "sum")]
    )
    # rows: record_kind, outcome, split, count_all, n_examples_sum, n_pairs_sum, n_dangling_sum
    groups = agg.to_pylist()
    events = t.filter(pc.equal(t["record_kind"], "file_event")).select(["source", "detail"]).to_pylist()
    return {"groups": groups, "truncated": [{"path": e["source"], "error": e["detail"]} for e in events]}


def train_subreddit_moments(path: str) -> dict[str, list[float]]:
    """Ray task: subreddit -> [n, sum, sum of squares] of log_score over TRAIN examples of one file."""
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["subreddit", "split", "log_score"])
    t = t.filter(pc.equal(t["split"], "train"))
    t = t.append_column("sq", pc.multiply(t["log_score"], t["log_score"]))
    agg = t.group_by("subreddit").aggregate([([], "count_all"), ("log_score", "sum"), ("sq", "sum")])
    return {r["subreddit"]: [r["count_all"], r["log_score_sum"], r["sq_sum"]] for r in agg.to_pylist()}


def merge_moments(parts: list[dict[str, list[float]]]) -> dict[str, dict]:
    """Per-file moments -> {subreddit: {count, mean, std}} plus '__all__' (pooled, for unseen subreddits)."""
    total: dict[str, list[float]] = {}
    for part in parts:
        for sub, (n, s, sq) in part.items():
            acc = total.setdefault(sub, [0, 0.0, 0.0])
            acc[0] += n
            acc[1] += s
            acc[2] += sq
    everything = [sum(v[i] for v in total.values()) for i in range(3)] if total else [0, 0.0, 0.0]
    out = {}
    for sub, (n, s, sq) in list(total.items()) + [("__all__", everything)]:
        mean = s / n if n else 0.0
        var = max(sq / n - mean * mean, 0.0) if n else 1.0
        out[sub] = {"count": int(n), "mean": mean, "std": var**0.5}
    return out


def add_subreddit_z(table: pa.Table, stats: dict[str, dict]) -> pa.Table:
    """subreddit_z = (log_score - mean_sub) / std_sub with TRAIN statistics (pooled for unseen subreddits)."""
    fallback = stats["__all__"]
    z = [
        zscore(value, stats.get(sub, fallback)["mean"], stats.get(sub, fallback)["std"])
        for sub, value in zip(table["subreddit"].to_pylist(), table["log_score"].to_pylist())
    ]
    return table.append_column("subreddit_z", pa.array(z, pa.float64()))


FINAL_SCHEMAS = {"example": threads.EXAMPLE_SCHEMA, "pair": threads.PAIR_SCHEMA, "ledger": threads.LEDGER_SCHEMA}


def finish_file(path: str, out_dir: str, kind: str, index: int, stats: dict | None) -> int:
    """Ray task: one staged file -> final Parquet with only `kind`'s columns, split into
    `split=<name>/` folders (examples and pairs); returns rows written. Streams record batches,
    so its memory does not grow with the staged file."""
    import pyarrow.parquet as pq

    writers: dict[str, pq.ParquetWriter] = {}
    rows = 0
    source = pq.ParquetFile(path)
    try:
        for batch in source.iter_batches(batch_size=32_768, columns=FINAL_SCHEMAS[kind].names):
            t = pa.Table.from_batches([batch])
            if kind == "example":
                t = add_subreddit_z(t, stats or {"__all__": {"mean": 0.0, "std": 1.0}})
            parts = {"": t} if kind == "ledger" else {s: t.filter(pc.equal(t["split"], s)) for s in pc.unique(t["split"]).to_pylist()}
            for split, part in parts.items():
                if split not in writers:
                    folder = Path(out_dir) / (f"split={split}" if split else "")
                    folder.mkdir(parents=True, exist_ok=True)
                    writers[split] = pq.ParquetWriter(folder / f"part-{index:05d}.parquet", part.schema)
                writers[split].write_table(part)
            rows += t.num_rows
    finally:
        for w in writers.values():
            w.close()
    return rows


def count_rows(folder: Path) -> int:
    """Rows in a folder of Parquet files, from their footers (no data read)."""
    import pyarrow.parquet as pq

    if not folder.exists():
        return 0
    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet"))


def _input_info(f: sources.InputFile) -> dict:
    return {"path": f.path, "format": f.format, "compression": f.compression, "kind": f.kind_hint, "bytes": f.size_bytes}


def _versions() -> dict:
    import ray

    from karma_ray import __version__

    return {"karma_ray": __version__, "ray": ray.__version__, "pyarrow": pa.__version__, "python": sys.version.split()[0]}


def render_summary(m: Manifest, out: Path) -> str:
    """A readable summary (also printed by the CLI)."""
    lines = [
        f"# karma prepare -> {out}",
        "",
        f"comments read        {m.records_read:>12,}",
        f"  malformed          {m.records_malformed:>12,}  {_fmt(m.malformed)}",
        f"  dropped            {sum(m.dropped.values()):>12,}  {_fmt(m.dropped)}",
        f"  examples written   {m.examples_written:>12,}  {_fmt(m.splits)}",
        f"  invariant          {'holds' if m.invariant_holds else 'VIOLATED'}: read = malformed + dropped + examples",
        f"pairs written        {m.pairs_written:>12,}  {_fmt(m.pair_splits)}",
        f"threads              {m.threads:>12,}  ({m.threads_without_submission:,} without their submission)",
        f"dangling parents     {m.dangling_parents:>12,}",
        f"submissions read     {m.submissions_read:>12,}  (malformed {m.submissions_malformed:,}, duplicate {m.submissions_duplicate:,})",
    ]
    for t in m.truncated_files:
        lines.append(f"TRUNCATED INPUT      {t['path']}: {t['error']}")
    lines.append(f"time                 {m.timings.get('total', 0):.1f} s  ({m.rows_per_second:,.0f} records/s in the main pass)")
    return "\n".join(lines) + "\n"


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) if d else ""


def read_manifest(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())
