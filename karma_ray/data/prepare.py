"""`karma prepare`: Reddit dumps -> reward-model examples and sibling pairs, on Ray.

    1-2. read+parse  Ray tasks (streaming generators), one per file, byte range of a plain file,
                     or chunk shard of a big compressed one: decompress, cut newline-aligned
                     chunks, parse, apply record filters                (sources.py, records.py)
    3.   group       whole threads meet in one block. Default ('partition'): the parse tasks cut
                     rounds of parsed chunks by a stable hash of link_id into zstd-packed Arrow
                     pieces, a single all-to-all exchange through the object store; one Ray Data
                     task per partition fetches its pieces and sorts them into one block.
                     Alternatives: Ray Data's sort shuffle or hash shuffle by link_id
    4.   build       contexts, labels, pairs, ledger over whole threads, in slices  (threads.py)
    5.   stage       the same task writes each slice as it comes: pairs/ and ledger/ final,
                     examples to _staging/ by split
    6.   count       Ray tasks over the ledger files -> the manifest's counts
    7.   finish      subreddit z-scores from TRAIN statistics -> examples/split=*/

Why read+parse are plain Ray tasks feeding Ray Data, not a Ray Data read operator (measured on
2 CPUs, 1M comments): as an operator upstream of an all-to-all shuffle, Ray Data's scheduler ran
the read tasks one at a time (37 s of 67 s), and with a separate parse operator a back-pressured
read task kept its CPU slot. Submitted as tasks, every file is read at once.

Why the default grouping is our own exchange rather than a Ray Data shuffle (2 CPUs, 1M comments):
the sort shuffle cost ~10 s of a 30 s main pass (sampling, sorting and merging a key we only need
grouped, not ordered), while cutting parsed chunks into partitions costs well under a second in the
tasks that already hold them; building and writing stay on Ray Data.

Why memory stays flat as the corpus grows (1M -> 4M comments, benchmarks/RESULTS.md): partitions
have a fixed size (~96 MiB of input JSON each), pieces wait in the object store packed (4.3x smaller,
so 4M comments do not spill), partitions never enter the object store as blocks, and each build
task writes its slices itself instead of through `write_parquet`, whose fused task holds its whole
output (Ray 2.60).

Every input line ends as exactly one example row or one ledger row, so
`records_read == records_malformed + sum(dropped) + examples_written` is a count of written rows,
not of side-channel counters; the manifest states it and prepare checks it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from karma_ray import __version__
from karma_ray.config import PrepareConfig, save_resolved, to_dict
from karma_ray.data import records, sources, threads
from karma_ray.data.corpus import MANIFEST_FILE, PreparedCorpus
from karma_ray.stage import begin_stage, claim_output, config_digest, finish_stage


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


def pack_piece(table: pa.Table) -> bytes:
    """A partition piece as a zstd (level 1) compressed Arrow IPC stream: 4.3x smaller in the object
    store (measured on parsed synthetic chunks: ~23 ms per 16 MiB JSON chunk to pack, a few ms to
    unpack; LZ4 was 2.6x at ~19 ms), so the parsed corpus waits for the build without spilling:
    4M comments are ~1.3 GB of Arrow, ~0.3 GB packed."""
    import pyarrow.ipc as ipc

    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema, options=ipc.IpcWriteOptions(compression=pa.Codec("zstd", 1))) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack_piece(data: bytes) -> pa.Table:
    import pyarrow.ipc as ipc

    return ipc.open_stream(pa.py_buffer(data)).read_all()


def concat_partition(*pieces: pa.Table) -> pa.Table:
    """One partition's pieces from every parse task -> one block of whole threads, sorted by link_id
    (when it will be built in slices), so the build cuts it into slices without copying it."""
    table = pa.concat_tables(pieces) if pieces else records.RECORD_SCHEMA.empty_table()
    return table.sort_by([("link_id", "ascending")]) if table.num_rows > BUILD_SLICE_ROWS else table


def read_records(f: sources.InputFile, plan: tuple[str, int, int], chunk_bytes: int, filters: Any,
                 n_partitions: int = 0) -> Iterator[pa.Table | bytes]:
    """Ray task body (streaming generator): decompress, parse and filter one file / byte range /
    chunk shard, yielding RECORD_SCHEMA blocks chunk by chunk (plus a marker row when the file
    ended early); a Parquet input (read whole) batch by batch through parse_parquet_batch. With
    n_partitions > 0 the parsed chunks are gathered into exchange rounds, each yielded as
    n_partitions packed pieces: piece i of the stream belongs to partition i % n_partitions."""
    kind, a, b = plan

    def parsed() -> Iterator[pa.Table]:
        if f.format == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(f.path).iter_batches(batch_size=65_536):
                yield parse_parquet_batch(pa.Table.from_batches([batch]), filters, source=f.path)
            return
        if kind == "range":
            chunks = sources.iter_range_chunks(f, a, b, chunk_bytes)
        else:  # ("shard", i, n) or ("whole", 0, 1)
            chunks = sources.iter_chunks(f, chunk_bytes, shard=a, n_shards=b)
        for c in chunks:
            info = records.ChunkInfo(c.source, c.index, c.kind_hint)
            table = records.parse_and_filter(c.data, info, filters, truncated_tail=c.truncated_tail)
            if c.truncated_tail:  # plus a ledger-only marker that the file ended early (not a record)
                marker = {**records.malformed_row(info, "file_truncated", c.error or ""), "record_kind": "file_event"}
                table = pa.concat_tables([table, records.rows_to_table([marker])])
            yield table

    # explicit loops, not `yield from`: Ray drives a streaming generator with send(), which a
    # delegated generator would receive
    for block in exchange_rounds(parsed(), n_partitions) if n_partitions else parsed():
        yield block


EXCHANGE_ROUND_BYTES = 32 << 20  # parsed Arrow bytes a read task gathers before cutting them by partition


def exchange_rounds(tables: Iterator[pa.Table], n_partitions: int) -> Iterator[bytes]:
    """Parsed tables -> packed partition pieces, n_partitions per round of ~EXCHANGE_ROUND_BYTES.
    Cutting every 16 MiB chunk n ways made pieces of ~100 KB packed at 22 partitions (4M comments),
    and Ray keeps task returns under 100 KB (max_direct_call_object_size) in the caller's heap instead
    of the object store: the driver grew to 0.6 GiB. A round of a few chunks keeps pieces several
    times larger for any partition count up to ~60, in a constant ~32 MiB per read task."""
    pending: list[pa.Table] = []
    pending_bytes = 0
    for table in tables:
        pending.append(table)
        pending_bytes += table.nbytes
        if pending_bytes >= EXCHANGE_ROUND_BYTES:
            yield from map(pack_piece, split_by_thread(pa.concat_tables(pending), n_partitions))
            pending, pending_bytes = [], 0
    if pending:
        yield from map(pack_piece, split_by_thread(pa.concat_tables(pending), n_partitions))


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
    big = [f for f in files if _json_bytes(f) > 2 * chunk_bytes]
    if not big:
        return {}
    n = max(1, min(max_tasks, cpus // len(big)))
    return {f.path: n for f in big}


def parse_parquet_batch(batch: pa.Table, filters: Any, source: str = "parquet") -> pa.Table:
    """Parquet inputs with Pushshift field names go through the same parser (as JSON lines), so
    every source is normalized and checked by one code path."""
    import orjson

    if "__source" in batch.column_names:  # the file's path, from Ray Data's read_parquet(include_paths=True)
        source = batch["__source"][0].as_py() if batch.num_rows else source
        batch = batch.drop_columns(["__source"])
    lines = b"".join(orjson.dumps(r, default=str) + b"\n" for r in batch.to_pylist())
    info = records.ChunkInfo(source, 0, sources.kind_hint_for(source))
    return records.parse_and_filter(lines, info, filters)


BUILD_SLICE_ROWS = 20_000  # records per build_block call inside one block (whole threads)


def build_stage_slices(block: pa.Table, cfg: PrepareConfig) -> Iterator[threads.BuiltRows]:
    """A block of whole threads -> its output rows, built and yielded in slices of whole threads of
    about BUILD_SLICE_ROWS records. build_block turns its logic columns into Python lists; a slice at
    a time keeps that from growing with the block. A block sorted by link_id (the 'partition' and
    'sort' groupings hand on sorted blocks) is sliced without copies; otherwise (a hash partition)
    only the link_id column is sorted and each slice gathers its own rows, so the block is never
    copied whole."""
    if block.num_rows <= BUILD_SLICE_ROWS:
        yield threads.build_block(block, cfg)
        return
    links = block["link_id"].combine_chunks()
    if pc.all(pc.greater_equal(links[1:], links[:-1])).as_py():
        take = block.slice
    else:
        order = pc.sort_indices(links)  # (n,) row order by thread
        links = links.take(order)
        take = lambda a, n: block.take(order.slice(a, n))  # noqa: E731
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


@dataclass
class _OpenFile:
    writer: Any = None  # pq.ParquetWriter, opened at the first flush
    path: Path | None = None
    rows: int = 0  # rows written to this file
    number: int = 0  # files already closed in this folder
    pending: list[pa.Table] = field(default_factory=list)  # rows not yet flushed
    pending_rows: int = 0


class StageFiles:
    """The Parquet files one build call writes, as its slices come: one open writer per folder, rows
    buffered up to FLUSH_ROWS per row group and a new file every `rows_per_file` rows, so memory does
    not grow with the block. File names derive from the block's first thread (threads never span
    blocks), so a task that Ray retries rewrites its own files instead of adding copies."""

    FLUSH_ROWS = 65_536

    def __init__(self, stem: str, rows_per_file: int) -> None:
        self.stem = stem
        self.rows_per_file = rows_per_file
        self._open: dict[Path, _OpenFile] = {}
        self.written: list[dict] = []  # {"path", "rows"} of every closed file

    def add(self, folder: Path, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        f = self._open.setdefault(folder, _OpenFile())
        f.pending.append(table)
        f.pending_rows += table.num_rows
        if f.pending_rows >= self.FLUSH_ROWS:
            self._flush(folder, f)

    def close(self) -> list[dict]:
        for folder, f in self._open.items():
            if f.pending:
                self._flush(folder, f)
            if f.writer is not None:
                self._close_file(f)
        self._open = {}
        return self.written

    def _flush(self, folder: Path, f: _OpenFile) -> None:
        import pyarrow.parquet as pq

        rows = pa.concat_tables(f.pending)
        f.pending, f.pending_rows = [], 0
        if f.writer is None:
            folder.mkdir(parents=True, exist_ok=True)
            f.path = folder / f"part-{self.stem}-{f.number:03d}.parquet"
            f.writer = pq.ParquetWriter(f.path, rows.schema)
        f.writer.write_table(rows)
        f.rows += rows.num_rows
        if f.rows >= self.rows_per_file:
            self._close_file(f)

    def _close_file(self, f: _OpenFile) -> None:
        f.writer.close()
        self.written.append({"path": str(f.path), "rows": f.rows})
        f.writer, f.path, f.rows, f.number = None, None, 0, f.number + 1


def block_stem(block: pa.Table) -> str:
    """A stable file-name stem for a block of whole threads: a digest of its smallest link_id."""
    import hashlib

    first = pc.min(block["link_id"]).as_py() or ""
    return hashlib.sha1(first.encode()).hexdigest()[:16]


def build_and_stage(block: pa.Table, cfg: PrepareConfig, output: str) -> pa.Table:
    """4-5. Ray Data UDF over one block of whole threads: build its stage rows slice by slice and write
    each slice as it comes: pairs and the ledger straight to their final folders, examples to
    `_staging/example/split=<s>/` (their subreddit z-scores need every block's TRAIN statistics first).
    Writing here rather than through `write_parquet` keeps memory flat: Ray 2.60's write operator tees
    the blocks it writes and its Parquet writer lists them, so a fused build+write task holds its
    block's whole output (measured: peak 1.60x from 1M to 4M comments). Returns one row per file."""
    written: list[dict] = []
    if block.num_rows:
        files = StageFiles(block_stem(block), cfg.rows_per_file)
        corpus = PreparedCorpus(Path(output))
        for built in build_stage_slices(block, cfg):
            for split, rows in built.examples.items():
                files.add(corpus.root / STAGING / "example" / f"split={split}", rows)
            for split, rows in built.pairs.items():
                files.add(corpus.pairs_dir(split), rows)
            files.add(corpus.ledger_dir, built.ledger)
        written = files.close()
    return pa.Table.from_pylist(written, schema=pa.schema([("path", pa.string()), ("rows", pa.int64())]))


def build_partitions(batch: dict[str, np.ndarray], pieces: list[list], cfg: PrepareConfig, output: str) -> pa.Table:
    """3-5. Ray Data UDF of the 'partition' grouping, over a dataset of partition indices: for each, fetch
    its packed pieces from every parse task, unpack them into one block of whole threads in link_id
    order (concat_partition), then build and stage it (build_and_stage). Partitions never enter the
    object store as blocks, so only the packed pieces wait there. Returns one row per file written."""
    import ray

    written = []
    for p in batch["id"].tolist():
        block = concat_partition(*[unpack_piece(data) for data in ray.get(pieces[p])])
        written.append(build_and_stage(block, cfg, output))
        del block
        # Return freed heap pages to the OS: Ray keeps task workers alive between tasks, and glibc
        # otherwise keeps the high-water mark of every task a worker ran.
        trim = _malloc_trim()
        if trim is not None:
            trim(0)
    return pa.concat_tables(written)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, looked up once per process (find_library runs ldconfig); None elsewhere."""
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        return ctypes.CDLL(libc).malloc_trim if libc else None
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        return None


STAGING = "_staging"


def partition_count(files: list[sources.InputFile], cpus: int, configured: int | None) -> int:
    """Partitions of the 'partition' grouping: the configured number, else at least 2 per CPU (and 4),
    and more for big inputs so a partition stays near PARTITION_TARGET_BYTES of input JSON (a build
    task's memory is about two partitions, so peak memory stays flat as the corpus grows), rounded up
    to a multiple of the CPUs so the last round of build tasks does not leave CPUs idle."""
    if configured:
        return configured
    estimated = sum(_json_bytes(f) for f in files)
    wanted = max(default_partitions(cpus), -(-estimated // PARTITION_TARGET_BYTES))
    return -(-wanted // cpus) * cpus


def default_partitions(cpus: int) -> int:
    """Partitions when neither the config nor the input size asks for more: 2 per CPU, at least 4."""
    return max(4, 2 * cpus)


PARTITION_TARGET_BYTES = 96 << 20
COMPRESSION_RATIO_ESTIMATE = 8  # Pushshift JSON under zstd/gzip: ~6-10x


def _json_bytes(f: sources.InputFile) -> int:
    """An input's estimated size as JSON text."""
    return f.size_bytes * (COMPRESSION_RATIO_ESTIMATE if f.compression != "none" else 1)


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
        return json.dumps(self.__dict__, indent=2)


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


@dataclass(frozen=True)
class PrepareResult:
    corpus: PreparedCorpus  # the layout readers open
    manifest: Manifest  # every count (read = malformed + dropped + examples)
    summary_path: Path  # summary.md (with report.png when plotted)

    @property
    def output(self) -> Path:
        return self.corpus.root


def run_prepare(cfg: PrepareConfig, output: str | os.PathLike, *, inputs: Sequence[str], overwrite: bool = False) -> PrepareResult:
    """Validate inputs, run the pipeline, write outputs and manifest.json. Inputs and the output
    folder are checked before Ray starts (InputError, OutputExistsError)."""
    t_start = time.perf_counter()
    files = sources.resolve_inputs(inputs, cfg.read.format)  # errors before any cluster work
    out = claim_output(output, "prepare", overwrite=overwrite, resumable=False,
                       recognizes=lambda p: (p / MANIFEST_FILE).exists() or (p / "config.yaml").exists())
    save_resolved(cfg, out)
    digest = config_digest(cfg, [str(f) for f in files])
    begin_stage(out, "prepare", digest)

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
        staged = _partition_and_build(text_files, parquet_files, cfg, cpus, chunk_bytes, out)
    else:
        grouped = _read_shuffled(text_files, parquet_files, cfg, cpus, chunk_bytes)
        # 4-5. build + stage: each call writes its own files and returns one row per file
        staged = grouped.map_batches(
            build_and_stage, batch_size=None, batch_format="pyarrow", fn_kwargs={"cfg": cfg, "output": str(out)}
        ).materialize()
    staged_files = staged.take_all()
    timings["read_parse_group_build"] = time.perf_counter() - t_main
    ray_stats = staged.stats()

    versions = {"karma_ray": __version__, "ray": ray.__version__, "pyarrow": pa.__version__, "python": sys.version.split()[0]}
    input_info = [{"path": f.path, "format": f.format, "compression": f.compression, "kind": f.kind_hint, "bytes": f.size_bytes}
                  for f in files]
    manifest = Manifest(inputs=input_info, config=to_dict(cfg), versions=versions)

    # 6. count: one task per ledger file, merged here. Plain Ray tasks rather than Ray Data
    # aggregates: each Ray Data execution costs seconds of fixed start-up, these cost milliseconds.
    t0 = time.perf_counter()
    staging = out / STAGING
    ledger_files = [f["path"] for f in staged_files if Path(f["path"]).is_relative_to(PreparedCorpus(out).ledger_dir)]
    example_files = [f["path"] for f in staged_files if Path(f["path"]).is_relative_to(staging)]
    count_task = ray.remote(ledger_counts)
    moments_task = ray.remote(train_subreddit_moments)
    counted = ray.get([count_task.remote(p) for p in ledger_files])
    moments = ray.get([moments_task.remote(p) for p in example_files])
    _accumulate(manifest, [g for part in counted for g in part["groups"]])
    manifest.truncated_files = [e for part in counted for e in part["truncated"]]
    manifest.subreddit_stats = merge_moments(moments)
    timings["count"] = time.perf_counter() - t0

    # 7. finish: subreddit z-scores from TRAIN statistics, one task per staged example file (pairs and
    # the ledger were written final by the build).
    t0 = time.perf_counter()
    finish = ray.remote(finish_examples)
    ray.get([finish.remote(p, str(out / "examples" / Path(p).relative_to(staging / "example")), manifest.subreddit_stats)
             for p in example_files])
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
    (out / MANIFEST_FILE).write_text(manifest.to_json())
    (out / "ray_data_stats.txt").write_text(str(ray_stats))
    from karma_ray.data.report import plot_prepare_report

    report = plot_prepare_report(out, manifest.__dict__)
    summary = render_summary(manifest, out)
    if report is not None:
        summary += f"\n![prepare report]({report.name})\n"
    (out / "summary.md").write_text(summary)
    finish_stage(out, "prepare", digest, {"records_read": manifest.records_read, "examples_written": manifest.examples_written,
                                          "invariant_holds": manifest.invariant_holds})
    return PrepareResult(corpus=PreparedCorpus(out.resolve()), manifest=manifest, summary_path=out / "summary.md")


def _partition_and_build(text_files: list, parquet_files: list, cfg: PrepareConfig, cpus: int, chunk_bytes: int, out: Path):
    """1-5 of the 'partition' grouping; returns the materialized Dataset of staged files."""
    import ray

    n_partitions = partition_count(text_files + parquet_files, cpus, cfg.shuffle_partitions)
    # 1-2. Each read task yields every parsed chunk already cut into n_partitions packed pieces
    # (piece i of a stream belongs to partition i % n).
    generators = _submit_reads(text_files, cfg, cpus, chunk_bytes, n_partitions, parquet_files)
    pieces: list[list] = [[] for _ in range(n_partitions)]
    for gen in generators:
        for i, ref in enumerate(gen):
            pieces[i % n_partitions].append(ref)
    # 3-5. The exchange and the build: one Ray Data task per partition fetches that partition's pieces
    # (refs passed along, so the driver never holds the data), builds and stages it.
    indices = ray.data.range(n_partitions, override_num_blocks=n_partitions)
    return indices.map_batches(
        build_partitions, batch_size=1, batch_format="numpy",
        fn_kwargs={"pieces": pieces, "cfg": cfg, "output": str(out)},
    ).materialize()


def _submit_reads(text_files: list, cfg: PrepareConfig, cpus: int, chunk_bytes: int, n_partitions: int,
                  parquet_files: Sequence = ()) -> list:
    """1-2. read + parse: one Ray task per file (a Parquet one whole), byte range or chunk shard, all
    submitted at once; each streams RECORD_SCHEMA blocks (a streaming generator) into the object store.
    Measured on 2 CPUs / 1M comments: the same tasks as a Ray Data read operator ran one at a time once
    a shuffle was downstream (its scheduler split 2 CPUs between operators), 2x slower end to end."""
    import ray

    shares = tasks_per_file(text_files, cpus, chunk_bytes, cfg.read.max_tasks_per_file)
    read_task = ray.remote(num_returns="streaming")(read_records)
    return [
        read_task.remote(f, plan, chunk_bytes, cfg.filters, n_partitions)
        for f in [*text_files, *parquet_files]
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
        for sub, moments in part.items():
            total[sub] = [a + b for a, b in zip(total.get(sub, [0, 0.0, 0.0]), moments)]
    everything = [sum(v[i] for v in total.values()) for i in range(3)] if total else [0, 0.0, 0.0]
    out = {}
    for sub, (n, s, sq) in list(total.items()) + [("__all__", everything)]:
        mean = s / n if n else 0.0
        var = max(sq / n - mean * mean, 0.0) if n else 1.0
        out[sub] = {"count": int(n), "mean": mean, "std": var**0.5}
    return out


def add_subreddit_z(table: pa.Table, stats: dict[str, dict]) -> pa.Table:
    """subreddit_z = (log_score - mean_sub) / std_sub with TRAIN statistics (pooled for unseen
    subreddits; centred only where std is 0), computed per distinct subreddit."""
    fallback = stats["__all__"]
    subs = pc.dictionary_encode(table["subreddit"]).combine_chunks()
    names = subs.dictionary.to_pylist() + [None]  # the last entry serves null subreddits
    mean = np.array([stats.get(n, fallback)["mean"] for n in names], dtype=np.float64)
    std = np.array([stats.get(n, fallback)["std"] for n in names], dtype=np.float64)
    index = pc.fill_null(subs.indices, len(names) - 1).to_numpy(zero_copy_only=False)
    centred = table["log_score"].to_numpy() - mean[index]
    row_std = std[index]
    z = np.where(row_std > 0, centred / np.where(row_std > 0, row_std, 1.0), centred)
    return table.append_column("subreddit_z", pa.array(z, pa.float64()))


def finish_examples(path: str, destination: str, stats: dict) -> int:
    """Ray task: one staged example file -> its final file with `subreddit_z`; returns rows written.
    Streams record batches, so its memory does not grow with the staged file."""
    import pyarrow.parquet as pq

    rows = 0
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=32_768):
            t = add_subreddit_z(pa.Table.from_batches([batch]), stats)
            writer = writer or pq.ParquetWriter(destination, t.schema)
            writer.write_table(t)
            rows += t.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def count_rows(folder: Path) -> int:
    """Rows in a folder of Parquet files, from their footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet"))


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
