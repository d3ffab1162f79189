"""Benchmark: the real streaming plan at scale, with synthetic sources and stage stubs of set cost.

    python -m curate.bench.scale [--rows 5000 20000 100000] [--clips-per-source 10] [--split-ms 20]
                                 [--score-ms 0.2] [--caption-ms 20] [--caption-batch 16] [--cpus 2]
                                 [--shard-rows 2000000] [--lookup-rows 1000000] [--manifest-rows 2000000] [--fold-rows 4000000]

Each size runs in a fresh process: a local Ray instance with `--cpus` CPUs that declares one GPU, the
job's real driver (`curate.pipeline._run`: the stream, the commit log, the finalize: tables, shards,
release files, report), with three stand-ins: a split task per source that sleeps `--split-ms` and makes
`--clips-per-source` clip rows (no files), a CPU scorer task that sleeps `--score-ms` per clip, and a
caption actor pool on the (declared) GPU that sleeps `--caption-ms` per batch of `--caption-batch` clips.
Then the same job again into the same output: a rerun with nothing to do.

Printed per size: driver peak RSS after the stream and at the end (and the growth per 1k rows between
sizes), wall seconds of the stream and the finalize, the share of time the caption actor was busy from its
first batch to its last, when the first caption batch finished relative to the end of the last split task
and how many caption batches finished before it, and the driver's filesystem calls on the rerun. Last, the
time to plan shards (hash buckets, packing) for `--shard-rows` clips, and the time a block's lookup of its
committed rows takes in a compacted commit log of `--lookup-rows` rows (by row groups, and reading the
whole part as before); and the driver's peak memory to go through a `--manifest-rows` manifest (Parquet,
CSV) in waves of `--sources-per-wave` rows as the job reads it, beside reading it as one table; and the
peak memory of folding a step's commit log of `--fold-rows` rows by id range, beside folding it whole.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import pyarrow as pa

from curate.layout import Layout


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


class FakeSplit:
    """The real per-source step (`IngestSplit`: the lookup of committed sources, the read back) with the
    split itself replaced: `clips` windows per source (no files), after sleeping `cost_s` (made lazily:
    curate.plan is imported in the worker)."""

    def __new__(cls, clips: int, cost_s: float, log_dir: str, split_cfg, out_url: str):
        from curate.plan import IngestSplit
        from schemas import ClipStatus, SourceStatus

        class Fake(IngestSplit):
            def __init__(self):
                super().__init__(split_cfg, out_url)  # its log and filesystem, as the job's
                self.times = f"{log_dir}/split-{os.getpid()}.txt"
                self.payload = f"{os.path.dirname(log_dir)}/clip.bin"  # every clip's "file": one small real one

            def split_source(self, r: dict) -> dict:
                time.sleep(cost_s)
                sid = hashlib.sha256(r["uri"].encode()).hexdigest()[:16]
                windows = [{"clip_id": f"{sid}_{i:06d}", "scene_index": i, "start_frame": 25 * i, "end_frame": 25 * i + 25,
                            "start_s": float(i), "end_s": float(i + 1), "duration_s": 1.0, "fps": 25.0, "width": 64, "height": 48,
                            "clip_uri": self.payload, "clip_bytes": 1000, "status": ClipStatus.KEPT}
                           for i in range(clips)]
                scenes = [{"scene_index": i, "start_frame": 25 * i, "end_frame": 25 * i + 25, "start_s": float(i), "end_s": float(i + 1)}
                          for i in range(clips)]
                _append(self.times, f"{time.time()}")
                return {**r, "license_raw": r["license"], "source_id": sid, "sha256": sid * 4, "size_bytes": 1 << 20,
                        "duration_s": float(clips), "fps": 25.0, "n_frames": 25 * clips, "width": 64, "height": 48,
                        "status": SourceStatus.OK, "reason": None, "scenes": scenes, "clips": windows}

        return Fake()


class FakeScore:
    """A CPU scorer: `cost_s` per clip, motion_score set."""

    def __init__(self, cost_s: float, log_dir: str):
        self.cost_s, self.log = cost_s, f"{log_dir}/score-{os.getpid()}.txt"

    def __call__(self, batch: pa.Table) -> pa.Table:
        time.sleep(self.cost_s * batch.num_rows)
        _append(self.log, f"{time.time()}")
        i = batch.schema.get_field_index("motion_score")
        return batch.set_column(i, "motion_score", pa.array([0.5] * batch.num_rows, pa.float64()))


class FakeCaption:
    """The GPU step: `cost_s` per call (a batch), a caption per clip; each call's (start, end) logged."""

    def __init__(self, cost_s: float, log_dir: str):
        self.cost_s, self.log = cost_s, f"{log_dir}/caption-{os.getpid()}.txt"

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.time()
        time.sleep(self.cost_s)
        i = batch.schema.get_field_index("caption")
        out = batch.set_column(i, "caption", pa.array([f"clip {c}" for c in batch["clip_id"].to_pylist()], pa.string()))
        _append(self.log, f"{t0} {time.time()} {batch.num_rows}")
        return out


class _FsCounter:
    """Counts the driver's calls into fsspec's local filesystem."""

    METHODS = ("info", "exists", "isdir", "isfile", "ls", "find", "glob", "open", "_open", "mv", "rm", "rm_file",
               "makedirs", "cat_file", "pipe_file", "size", "created", "modified")

    def __init__(self):
        from fsspec.implementations.local import LocalFileSystem

        self.n = 0
        for name in self.METHODS:
            real = getattr(LocalFileSystem, name, None)
            if real is not None:
                setattr(LocalFileSystem, name, self._wrap(real))

    def _wrap(self, real):
        def counted(fs, *a, **k):
            self.n += 1
            return real(fs, *a, **k)

        return counted


def one(rows: int, args) -> dict:
    """One size, in this process."""
    import ray

    import curate.pipeline as pipeline
    from curate.config import load_job
    from curate.plan import Pool, Step
    from curate.storage import Output

    sources = max(1, rows // args.clips_per_source)
    work = tempfile.mkdtemp(prefix="curate-scale-")
    logs = f"{work}/logs"
    os.makedirs(logs)
    with open(f"{work}/clip.bin", "wb") as f:
        f.write(b"\0" * 1000)
    job = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "demo.yaml")
    cfg = load_job(job, [f"output={work}/out", "motion=null", "aesthetic=null", "watermark=null", "text=null", "nsfw=null",
                         "dedup=null", "caption=null", "latents=null", "select.where=null", "shards.max_samples=1000",
                         f"ray.sources_per_wave={args.sources_per_wave}"])
    os.makedirs(f"{work}/inputs")
    for i in range(sources):  # real (tiny) files: the rerun's lookup stats them as it does real inputs
        with open(f"{work}/inputs/video-{i:07d}.mp4", "wb") as f:
            f.write(b"\0")
    inputs = pa.table({"uri": [f"{work}/inputs/video-{i:07d}.mp4" for i in range(sources)], "license": ["CC0-1.0"] * sources,
                       "title": [None] * sources, "author": [None] * sources, "source_url": [None] * sources,
                       "attribution": [None] * sources})
    steps = [
        Step("score", (Pool(FakeScore, (args.score_ms / 1000, logs), batch_size=64),), ("motion_score",), "bench"),
        Step("caption", (Pool(FakeCaption, (args.caption_ms / 1000, logs), actors=(1, 1), gpu=True, batch_size=args.caption_batch),),
             ("caption",), "bench"),
    ]
    ray.init(address="local", num_cpus=args.cpus, num_gpus=1, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    pipeline.configure_logging(bool(os.environ.get("CURATE_BENCH_VERBOSE")))
    marks = {}
    real_finalize = pipeline.finalize_tables

    def after_stream(*a, **k):
        marks.setdefault("rss_stream_mb", _rss_mb())
        marks.setdefault("t_stream", time.time())
        return real_finalize(*a, **k)

    pipeline.finalize_tables = after_stream
    source = (FakeSplit, (args.clips_per_source, args.split_ms / 1000, logs, cfg.split, cfg.output))
    out = Output(cfg.output)
    t0 = time.time()
    summary = pipeline._run(cfg, out, None, inputs=inputs, steps=steps, source=source)
    t1 = time.time()
    rss_end = _rss_mb()

    splits = sorted(float(x) for p in glob.glob(f"{logs}/split-*.txt") for x in open(p).read().split())
    scores = sorted(float(x) for p in glob.glob(f"{logs}/score-*.txt") for x in open(p).read().split())
    calls = sorted(tuple(map(float, line.split())) for p in glob.glob(f"{logs}/caption-*.txt") for line in open(p) if line.strip())
    last_split = splits[-1]
    first_start, last_end = calls[0][0], calls[-1][1]
    busy = sum(e - s for s, e, _ in calls)
    # the steady state: from the caption actor's first batch to the end of the last split task (while
    # the split still feeds it): how much of that time it spent captioning
    w0, w1 = first_start, last_split
    steady = sum(max(0.0, min(e, w1) - max(s, w0)) for s, e, _ in calls) / (w1 - w0) if w1 > w0 else None
    result = {
        "rows": rows, "sources": sources, "clips_kept": summary.clips_kept, "shards": summary.shards,
        "driver_peak_rss_stream_mb": round(marks["rss_stream_mb"], 1), "driver_peak_rss_end_mb": round(rss_end, 1),
        "stream_s": round(marks["t_stream"] - t0, 2), "finalize_s": round(t1 - marks["t_stream"], 2),
        "caption_busy_share": round(busy / max(1e-9, last_end - first_start), 3),
        "caption_busy_share_steady": None if steady is None else round(steady, 3),
        "caption_batches": len(calls), "first_split_s": round(splits[0] - t0, 2), "last_split_s": round(splits[-1] - t0, 2),
        "first_score_s": round(scores[0] - t0, 2), "first_caption_s": round(calls[0][1] - t0, 2),
        "caption_batches_before_last_split": sum(1 for _, e, _ in calls if e <= last_split),
        "first_caption_batch_vs_last_split_s": round(calls[0][1] - last_split, 2),
    }
    # the rerun: nothing to do
    for p in glob.glob(f"{logs}/*"):
        os.remove(p)
    counter = _FsCounter()
    t2 = time.time()
    again = pipeline._run(cfg, out, None, inputs=inputs, steps=steps, source=source)
    result["rerun_s"] = round(time.time() - t2, 2)
    result["rerun_stage_s"] = again.stage_s
    result["rerun_driver_fs_calls"] = counter.n
    result["rerun_caption_batches"] = sum(1 for p in glob.glob(f"{logs}/caption-*.txt") for _ in open(p))
    ray.shutdown()
    return result


def shard_planning(rows: int) -> float:
    """Seconds to assign `rows` kept clips to hash-bucketed shards."""
    import numpy as np

    from schemas import CLIPS, conform
    from stages.shards import ShardConfig, assign_shards

    n_sources = max(1, rows // 20)
    src = np.arange(rows) // 20
    table = conform(pa.table({
        "clip_id": pa.array([f"{s:010x}_{i:06d}" for s, i in zip(src, np.arange(rows) % 20)]),
        "source_id": pa.array([f"{s:016x}" for s in src]),
        "start_frame": pa.array((np.arange(rows) % 20) * 25, pa.int64()),
        "clip_bytes": pa.array(np.full(rows, 2_000_000), pa.int64()),
        "status": pa.array(["kept"] * rows),
    }), CLIPS)
    del n_sources
    t = time.time()
    assign_shards(table, ShardConfig(), Layout.SHARD_PREFIX)
    return time.time() - t


def committed_lookup(rows: int, block: int = 64, tries: int = 50) -> tuple[float, float]:
    """ms to look one block's clips up in a step's compacted log of `rows` rows (what every block of a
    rerun does per step), through CommitLog.rows (the row groups holding them), and reading the whole
    part as before row groups."""
    import random

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from curate.commit import CommitLog

    with tempfile.TemporaryDirectory(prefix="curate-bench-lookup-") as tmp:
        log = CommitLog(tmp, "caption", "k")
        ids = [f"{hashlib.sha256(str(s).encode()).hexdigest()[:16]}/{c:04d}" for s in range(-(-rows // 50)) for c in range(50)][:rows]
        step = max(1, rows // 65)
        for i in range(0, rows, step):  # more than 64 parts, so compact folds them
            part = ids[i : i + step]
            log.write(pa.table({"id": part, "match": [None] * len(part), "caption": [f"a caption of clip {x}, " * 4 for x in part]}), run=1)
        log.compact()
        rng = random.Random(0)
        t = time.time()
        for _ in range(tries):
            start = rng.randrange(0, rows - block)
            index = log.locate(ids[start : start + block])
            got = log.rows({(i, None): index[(i, None)] for i in ids[start : start + block]})
        by_groups = (time.time() - t) / tries * 1000
        assert len(got) == block
        parts = log.parts()  # the folds (one per id range of FOLD_ROWS rows)
        t = time.time()
        for _ in range(tries):
            start = rng.randrange(0, rows - block)
            for part in parts:
                with log.fs.open(part, "rb") as f:
                    whole = pq.read_table(f)
                whole.filter(pc.is_in(whole["id"], pa.array(ids[start : start + block])))
        return by_groups, (time.time() - t) / tries * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="*", default=[5000, 20000, 100000])
    p.add_argument("--clips-per-source", type=int, default=10)
    p.add_argument("--split-ms", type=float, default=20)
    p.add_argument("--score-ms", type=float, default=0.2)
    p.add_argument("--caption-ms", type=float, default=20)
    p.add_argument("--caption-batch", type=int, default=16)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--shard-rows", type=int, default=2_000_000)
    p.add_argument("--sources-per-wave", type=int, default=20000, help="ray.sources_per_wave: sources per execution of the plan")
    p.add_argument("--lookup-rows", type=int, default=1_000_000, help="rows of the compacted log a block's lookup is timed in (0: skip)")
    p.add_argument("--manifest-rows", type=int, default=2_000_000, help="rows of the manifest the input listing's driver memory is measured on (0: skip)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--fold-rows", type=int, default=4_000_000, help="rows of a step's log whose fold's peak memory is measured, by id range and whole (0: skip)")
    p.add_argument("--listing", nargs=2, metavar=("MANIFEST", "HOW"), help=argparse.SUPPRESS)
    p.add_argument("--fold", nargs=2, metavar=("ROOT", "HOW"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args)))
        return 0
    if args.listing:
        print(json.dumps(listing_memory(*args.listing, wave=args.sources_per_wave)))
        return 0
    if args.fold:
        print(json.dumps(fold_memory(*args.fold)))
        return 0
    results = []
    for rows in args.rows:
        cmd = [sys.executable, "-m", "curate.bench.scale", "--one", str(rows), *_pass(args)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    for a, b in zip(results, results[1:]):
        slope = (b["driver_peak_rss_end_mb"] - a["driver_peak_rss_end_mb"]) / ((b["rows"] - a["rows"]) / 1000)
        slope_s = (b["driver_peak_rss_stream_mb"] - a["driver_peak_rss_stream_mb"]) / ((b["rows"] - a["rows"]) / 1000)
        print(f"driver RSS {a['rows']} -> {b['rows']} rows: +{b['driver_peak_rss_end_mb'] - a['driver_peak_rss_end_mb']:.1f} MB "
              f"({slope:.2f} MB per 1k rows; stream only {slope_s:.2f} MB per 1k rows); rerun fs calls "
              f"{a['rerun_driver_fs_calls']} -> {b['rerun_driver_fs_calls']}")
    if args.shard_rows:
        print(f"shard planning for {args.shard_rows} clips: {shard_planning(args.shard_rows):.1f} s")
    if args.lookup_rows:
        groups, whole = committed_lookup(args.lookup_rows)
        print(f"a block's lookup in a compacted log of {args.lookup_rows} rows: {groups:.1f} ms by row groups, "
              f"{whole:.1f} ms reading the whole log ({whole / groups:.0f}x)")
    if args.manifest_rows:
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("parquet", "csv"):
                got = {}
                for rows in (args.manifest_rows // 4, args.manifest_rows):
                    path = write_manifest(f"{tmp}/manifest-{rows}.{fmt}", rows)
                    for how in ("waves", "whole"):
                        cmd = [sys.executable, "-m", "curate.bench.scale", "--listing", path, how, "--sources-per-wave", str(args.sources_per_wave)]
                        got[how, rows] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
                    os.remove(path)
                (w1, w2), (a1, a2) = ([got[how, r]["rss_growth_mb"] for r in (args.manifest_rows // 4, args.manifest_rows)] for how in ("waves", "whole"))
                print(f"input listing of a {fmt} manifest, driver peak RSS growth at {args.manifest_rows // 4} -> {args.manifest_rows} rows: "
                      f"{w1:.0f} -> {w2:.0f} MB read in waves of {args.sources_per_wave} ({got['waves', args.manifest_rows]['rows_per_s'] / 1e6:.2f}M rows/s), "
                      f"{a1:.0f} -> {a2:.0f} MB as one table", flush=True)
    if args.fold_rows:
        import shutil

        with tempfile.TemporaryDirectory(prefix="curate-bench-fold-") as tmp:
            write_log(f"{tmp}/a", args.fold_rows)
            shutil.copytree(f"{tmp}/a", f"{tmp}/b")
            got = {}
            for how, root in (("ranges", f"{tmp}/a"), ("whole", f"{tmp}/b")):
                cmd = [sys.executable, "-m", "curate.bench.scale", "--fold", root, how]
                got[how] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            r, w = got["ranges"], got["whole"]
            print(f"folding a step's log of {args.fold_rows} rows in 65 parts: peak RSS growth {r['rss_growth_mb']:.0f} MB by id ranges of "
                  f"{r['fold_rows']} rows ({r['parts']} parts, {r['s']:.1f} s) vs {w['rss_growth_mb']:.0f} MB whole ({w['s']:.1f} s)", flush=True)
    return 0


def write_log(root: str, rows: int) -> None:
    """A caption step's log of `rows` rows in 65 parts (so compact folds it): ids in no order."""
    from curate.commit import CommitLog

    log = CommitLog(root, "caption", "k")
    step = -(-rows // 65)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        h = pa.array([hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in range(start, start + n)])
        import pyarrow.compute as pc

        log.write(pa.table({"id": h, "match": pa.nulls(n, pa.string()),
                            "caption": pc.binary_join_element_wise("a caption of clip ", h, ", with some words about what it shows", "")}), run=1)


def fold_memory(root: str, how: str) -> dict:
    """Peak RSS growth (MB) of `compact` on the log under `root`: by id ranges (FOLD_ROWS) or whole."""
    import curate.commit as commit

    if how == "whole":
        commit.FOLD_ROWS = 1 << 62
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, t0 = _hwm_mb(), time.time()
    log = commit.CommitLog(root, "caption", "k")
    log.compact()
    return {"rss_growth_mb": _hwm_mb() - base, "s": time.time() - t0, "parts": len(log.parts()), "fold_rows": commit.FOLD_ROWS}


def write_manifest(path: str, rows: int) -> str:
    """A manifest like a crawl's: a long object-store uri, a licence, a title, an author, a source url."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    i = pa.array(range(rows), pa.int64()).cast(pa.string())
    import pyarrow.compute as pc

    cat = lambda *xs: pc.binary_join_element_wise(*xs, "")  # noqa: E731
    table = pa.table({"uri": cat("s3://corpus-bucket/crawl-2026-11/part-0042/videos/", i, ".mp4"),
                      "license": pa.array(["CC-BY-4.0"] * rows), "title": cat("A video about something, number ", i),
                      "author": cat("uploader_", i), "source_url": cat("https://example.org/watch?v=", i)})
    (pq.write_table(table, path, row_group_size=100_000) if path.endswith(".parquet") else pacsv.write_csv(table, path))
    return path


def listing_memory(manifest: str, how: str, wave: int) -> dict:
    """Driver peak RSS growth (MB) to go through every row of `manifest`: in waves as the job reads it
    (each wave dropped before the next), or as one table (how the job read it before)."""
    from curate.config import InputConfig
    from curate.inputs import Listing, read_manifest

    cfg = InputConfig(manifest=manifest)
    # A process's peak RSS starts at its parent's (fork copies the high-water mark and exec keeps it):
    # reset it where Linux allows (/proc/self/clear_refs), so the growth is this process's own.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, t0, n = _hwm_mb(), time.time(), 0
    if how == "waves":
        for table in Listing(cfg, wave):
            n += table.num_rows
    else:
        n = read_manifest(cfg).num_rows
    return {"rows": n, "rss_growth_mb": _hwm_mb() - base, "rows_per_s": n / max(1e-6, time.time() - t0)}


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _pass(args) -> list[str]:
    return ["--clips-per-source", str(args.clips_per_source), "--split-ms", str(args.split_ms), "--score-ms", str(args.score_ms),
            "--caption-ms", str(args.caption_ms), "--caption-batch", str(args.caption_batch), "--cpus", str(args.cpus),
            "--shard-rows", "0", "--lookup-rows", "0", "--manifest-rows", "0", "--fold-rows", "0", "--sources-per-wave", str(args.sources_per_wave)]


if __name__ == "__main__":
    sys.exit(main())
