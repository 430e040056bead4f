"""Benchmark `karma prepare` against baselines measured in the same run.

    python benchmarks/bench_prepare.py [--comments 1000000] [--scale 4] [--cpus 2] [--workdir runs/bench] [key=value ...]

Prints, for a synthetic Pushshift corpus (RC/RS .zst, 2 GiB window):
  1. pipeline rows/s (records = comment + submission lines; main pass and end to end)
  2. parse baseline: ONE process that only decompresses and parses the same files (our own
     fastest parser, python-zstandard + pyarrow JSON, no filters, no threads); ratio per core used
     (target >= 0.25 per core; 1.0 would mean perfect scaling of a pipeline that only parsed)
  3. straightforward one-process build: the same examples in one process, no Ray, parsing line
     by line (orjson + normalize_record, the obvious way) and building threads with the same
     builder -> Parquet; speed-up of the pipeline end to end (target >= 1.5x)
  4. peak memory (PSS summed over the driver and all Ray processes) at 1x and `--scale`x corpus
     size with the same cluster settings (target: flat, <= 1.3x), from separate runs: sampling
     memory slows the pipeline, so the timed run in 1. is not sampled
Results also go to DIR/bench_prepare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from karma_ray.config import PrepareConfig, load_config  # noqa: E402
from karma_ray.data import records, sources, threads  # noqa: E402
from karma_ray.data.synth import write_synthetic_corpus  # noqa: E402


class PeakMemory:
    """Samples the proportional set size (PSS) of this process and all its descendants (the local
    Ray cluster's raylet, GCS, workers). PSS splits shared pages (the object store) fairly, so
    summing it does not count the plasma store once per worker as RSS would."""

    def __init__(self, root_pid: int, interval: float = 0.5) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.peak = 0
        self.peak_parts: dict[str, int] = {}  # Pss_Anon / Pss_Shmem / Pss_File at the peak
        self.peak_processes: list[tuple[str, int]] = []  # (process title, PSS bytes) at the peak, largest first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        parts = {"Pss_Anon": 0, "Pss_Shmem": 0, "Pss_File": 0}
        per_process = []
        for p in procs:
            try:
                own = 0
                with open(f"/proc/{p.pid}/smaps_rollup") as fh:
                    for line in fh:
                        key = line.split(":")[0]
                        if key in parts:
                            parts[key] += int(line.split()[1]) * 1024
                            own += int(line.split()[1]) * 1024
                with open(f"/proc/{p.pid}/cmdline", "rb") as fh:  # Ray workers retitle themselves ray::<task>
                    title = fh.read().split(b"\0")[0].decode(errors="replace")[-40:]
                per_process.append((title, own))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
        self._last_parts = parts
        self._last_processes = sorted(per_process, key=lambda x: -x[1])
        return sum(parts.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            total = self._sample()
            if total > self.peak:
                self.peak, self.peak_parts, self.peak_processes = total, dict(self._last_parts), self._last_processes
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def parse_only(files: list[sources.InputFile], chunk_bytes: int) -> tuple[int, float]:
    """Baseline: decompress + parse every line in this one process; (records, seconds)."""
    t0 = time.perf_counter()
    n = 0
    for f in files:
        for c in sources.iter_chunks(f, chunk_bytes):
            n += records.parse_chunk(c.data, records.ChunkInfo(c.source, c.index, c.kind_hint), c.truncated_tail).num_rows
    return n, time.perf_counter() - t0


def one_process_build(files: list[sources.InputFile], cfg: PrepareConfig, out: Path) -> tuple[int, float]:
    """Baseline: the same examples built the straightforward way in one process, no Ray: JSON
    parsed line by line (orjson + normalize_record), then the same thread builder and Parquet."""
    t0 = time.perf_counter()
    tables = []
    for f in files:
        for c in sources.iter_chunks(f, cfg.read.chunk_mib << 20):
            info = records.ChunkInfo(c.source, c.index, c.kind_hint)
            tables.append(records.apply_filters(records.parse_lines(c.data, info, truncated_tail=c.truncated_tail), cfg.filters))
    built = threads.build_block(pa.concat_tables(tables), cfg)
    examples = built.table("example")
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(examples, out / "examples.parquet")
    pq.write_table(built.table("pair"), out / "pairs.parquet")
    return examples.num_rows, time.perf_counter() - t0


def run_pipeline_subprocess(corpus: Path, out: Path, overrides: list[str], sample_memory: bool = True) -> dict:
    """One `run_prepare` in a fresh process (its own local Ray cluster), peak memory sampled or not:
    reading /proc/*/smaps_rollup of ~15 processes costs 45-165 ms a pass, i.e. 5-15% of 2 CPUs at 2 Hz,
    so timed runs are not sampled."""
    code = (
        "import json,sys,time;from karma_ray.config import PrepareConfig,load_config;"
        "from karma_ray.data.prepare import run_prepare;"
        f"cfg=load_config(PrepareConfig,None,{overrides!r});t=time.perf_counter();"
        f"m=run_prepare(cfg, {str(out)!r}, inputs=[{str(corpus)!r}], overwrite=True).manifest;"
        "print('RESULT'+json.dumps({'wall':time.perf_counter()-t,'timings':m.timings,'records':m.records_read+m.submissions_read,"
        "'examples':m.examples_written,'invariant':m.invariant_holds}))"
    )
    import subprocess

    env = dict(os.environ, RAY_DEDUP_LOGS="0")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    # Only the child and its Ray cluster are measured, not this process (it holds the baselines' data).
    mem = PeakMemory(proc.pid)
    if sample_memory:
        with mem:
            stdout, _ = proc.communicate()
    else:
        stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline failed (exit {proc.returncode})")
    line = [x for x in stdout.splitlines() if x.startswith("RESULT")][-1]
    result = json.loads(line[len("RESULT") :])
    result["peak_pss_bytes"] = mem.peak
    result["peak_pss_parts"] = mem.peak_parts
    result["peak_pss_processes"] = mem.peak_processes
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comments", type=int, default=1_000_000)
    p.add_argument("--scale", type=int, default=4, help="second corpus size for the memory check (x --comments); 0 skips it")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--object-store-gb", type=float, default=1.0)
    p.add_argument("--workdir", default="runs/bench")
    p.add_argument("--memory-only", action="store_true", help="skip the baselines; pipeline at 1x and --scale x only")
    p.add_argument("overrides", nargs="*", help="pipeline config overrides, e.g. shuffle=sort")
    args = p.parse_args()
    work = Path(args.workdir)
    overrides = [
        f"ray.num_cpus={args.cpus}",
        f"ray.object_store_memory_gb={args.object_store_gb}",
        "ray.progress_bars=false",
        "filters.min_settle_seconds=3600",
        *args.overrides,
    ]
    cfg = load_config(PrepareConfig, None, overrides)
    results: dict = {"comments": args.comments, "cpus": args.cpus, "object_store_gb": args.object_store_gb,
                     "overrides": list(args.overrides)}

    corpus = work / f"corpus_{args.comments}"
    if not (corpus / "synth_summary.json").exists():
        t0 = time.perf_counter()
        write_synthetic_corpus(corpus, args.comments, seed=1)
        print(f"synthesized {args.comments:,} comments in {time.perf_counter() - t0:.1f} s", flush=True)
    files = sources.resolve_inputs([str(corpus)])

    if args.memory_only:
        r1 = run_pipeline_subprocess(corpus, work / "prepared_1x", overrides)
        big = work / f"corpus_{args.comments * args.scale}"
        if not (big / "synth_summary.json").exists():
            write_synthetic_corpus(big, args.comments * args.scale, seed=2)
        r4 = run_pipeline_subprocess(big, work / f"prepared_{args.scale}x", overrides)
        for name, r in (("1x", r1), (f"{args.scale}x", r4)):
            parts = ", ".join(f"{k[4:].lower()} {v / 2**30:.2f}" for k, v in r["peak_pss_parts"].items())
            print(f"{name}: main pass {r['timings']['read_parse_group_build']:.1f} s, peak PSS {r['peak_pss_bytes'] / 2**30:.2f} GiB ({parts})")
            print("    largest processes at the peak: " + ", ".join(f"{t} {b / 2**30:.2f}" for t, b in r["peak_pss_processes"][:6]))
        return 0
    n_parsed, t_parse = parse_only(files, cfg.read.chunk_mib << 20)
    print(f"[baseline] decompress+parse, 1 process: {n_parsed:,} records in {t_parse:.1f} s = {n_parsed / t_parse:,.0f} rows/s", flush=True)

    n_built, t_build = one_process_build(files, cfg, work / "one_process")
    print(f"[baseline] straightforward one-process build: {n_built:,} examples in {t_build:.1f} s", flush=True)

    r1 = run_pipeline_subprocess(corpus, work / "prepared_1x", overrides, sample_memory=False)
    main_pass = r1["timings"]["read_parse_group_build"]
    end_to_end = r1["timings"]["total"] - r1["timings"]["ray_init"]
    rows_s = r1["records"] / main_pass
    rows_s_e2e = r1["records"] / end_to_end
    assert r1["records"] == n_parsed, "pipeline and baseline saw different record counts"
    assert r1["examples"] == n_built, "pipeline and one-process build made different example counts"
    print(f"[karma]    pipeline: {r1['records']:,} records, main pass {main_pass:.1f} s = {rows_s:,.0f} rows/s; "
          f"end to end (without ray.init) {end_to_end:.1f} s = {rows_s_e2e:,.0f} rows/s", flush=True)

    per_core = rows_s / (n_parsed / t_parse) / args.cpus
    per_core_e2e = rows_s_e2e / (n_parsed / t_parse) / args.cpus
    speedup = t_build / end_to_end
    results.update(
        parse_baseline_rows_per_s=n_parsed / t_parse,
        one_process_build_s=t_build,
        pipeline=r1,
        pipeline_rows_per_s_main_pass=rows_s,
        pipeline_rows_per_s_end_to_end=rows_s_e2e,
        ratio_to_parse_baseline_per_core=per_core,
        ratio_to_parse_baseline_per_core_end_to_end=per_core_e2e,
        speedup_vs_one_process_build=speedup,
    )
    print(f"ratio to parse-only baseline per core: {per_core:.2f} (main pass), {per_core_e2e:.2f} (end to end)  [target >= 0.25]")
    print(f"speed-up vs one-process build (end to end): {speedup:.2f}x  [target >= 1.5x]")

    if args.scale:
        big = work / f"corpus_{args.comments * args.scale}"
        if not (big / "synth_summary.json").exists():
            write_synthetic_corpus(big, args.comments * args.scale, seed=2)
        r1 = run_pipeline_subprocess(corpus, work / "prepared_1x", overrides)  # again, memory sampled
        r4 = run_pipeline_subprocess(big, work / f"prepared_{args.scale}x", overrides)
        ratio = r4["peak_pss_bytes"] / r1["peak_pss_bytes"]
        results.update(pipeline_memory_sampled=r1, pipeline_scaled=r4, peak_memory_ratio=ratio, scale=args.scale)
        print(f"peak memory: {r1['peak_pss_bytes'] / 2**30:.2f} GiB at 1x, {r4['peak_pss_bytes'] / 2**30:.2f} GiB at {args.scale}x "
              f"-> ratio {ratio:.2f}  [target <= 1.3]")
        for name, r in (("1x", r1), (f"{args.scale}x", r4)):
            parts = ", ".join(f"{k[4:].lower()} {v / 2**30:.2f} GiB" for k, v in r["peak_pss_parts"].items())
            print(f"  at the {name} peak: {parts}  (file-backed pages are reclaimable page cache, e.g. spilled objects)")
            print("    largest processes: " + ", ".join(f"{t} {b / 2**30:.2f}" for t, b in r["peak_pss_processes"][:6]))
        print(f"  {args.scale}x pipeline: {r4['records']:,} records, main pass {r4['timings']['read_parse_group_build']:.1f} s")
    (work / "bench_prepare.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
