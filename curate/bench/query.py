"""Benchmark: `curate query` group-bys over a large hive-partitioned `clips` table, and over the same rows
as one file.

    python -m curate.bench.query [--rows 2000000] [--buckets 256] [--parts 2] [--repeat 3] [--keep DIR] [--no-cli]

Writes a synthetic `clips` table with the real CLIPS schema (20 clips per source, bucket = hash of the
source mod --buckets, --parts part files per bucket, zstd like the job's tables; ids, licences, statuses,
durations, scores and captions filled, the other columns null) as OUT/tables/clips/bucket=NNNNN/part-*.parquet,
and the same rows as a second output's tables/clips.parquet. Then, through `curate.catalog.query`
(what `curate query` runs: open the catalog, run the SQL, render the text table), it times each query
--repeat times on each layout (first and best seconds), and once as a whole `curate query` process
(interpreter start and imports included). The licence counts are checked against the generated rows.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.layout import Layout
from schemas import CLIPS, conform

QUERIES = {
    "licence group-by": "SELECT license, count(*), sum(duration_s) FROM clips GROUP BY 1",
    "source group-by": "SELECT source_id, count(*) AS clips, avg(aesthetic_score) FROM clips WHERE status = 'kept' "
    "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10",
    "one bucket": "SELECT status, count(*), sum(duration_s) FROM clips WHERE bucket = 7 GROUP BY 1 ORDER BY 1",
}
LICENSES = ["CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "MIT", "NOASSERTION"]
CLIPS_PER_SOURCE = 20


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64s: well-spread hashes of row and source numbers."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hex16(values: np.ndarray) -> pa.Array:
    """uint64s as 16-hex-digit strings, built as one Arrow buffer (no Python loop)."""
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    nibbles = (values[:, None] >> np.arange(60, -4, -4, dtype=np.uint64)) & np.uint64(0xF)
    data = digits[nibbles.astype(np.intp)].tobytes()
    offsets = np.arange(0, 16 * (len(values) + 1), 16, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def synthetic_clips(n: int, buckets: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """`n` CLIPS rows and the bucket of each (hash of its source mod `buckets`)."""
    rng = np.random.default_rng(seed)
    source = np.arange(n, dtype=np.uint64) // np.uint64(CLIPS_PER_SOURCE)
    source_hash = _mix(source)
    source_id = _hex16(source_hash)
    k = pa.array(np.arange(n, dtype=np.int64) % CLIPS_PER_SOURCE).cast(pa.string())
    clip_id = pc.binary_join_element_wise(source_id, k, "_")
    start = rng.integers(0, 20_000, n)
    frames = rng.integers(25, 500, n)
    status_i = np.searchsorted([0.70, 0.95], rng.random(n))  # kept 70%, filtered 25%, error 5%
    status = pa.array(["kept", "filtered", "error"]).take(pa.array(status_i))
    reasons = pa.array([None, "select: aesthetic_score >= 4.5", "score_error"])
    captions = pa.array([f"A {a} {b} in a {c}, filmed {d}." for a in ("slow", "busy", "quiet", "bright")
                         for b in ("street", "river", "crowd", "forest") for c in ("city", "valley", "park", "hall")
                         for d in ("at night", "from above")])  # fmt: skip
    caption = captions.take(pa.array(rng.integers(0, len(captions), n)))
    kept = pa.array(status_i == 0)
    columns = {
        "clip_id": clip_id,
        "source_id": source_id,
        "scene_index": pa.array(np.arange(n, dtype=np.int32) % CLIPS_PER_SOURCE),
        "start_frame": pa.array(start),
        "end_frame": pa.array(start + frames),
        "start_s": pa.array(start / 25.0),
        "end_s": pa.array((start + frames) / 25.0),
        "duration_s": pa.array(frames / 25.0),
        "fps": pa.array(np.full(n, 25.0)),
        "n_frames": pa.array(frames),
        "width": pa.array(np.full(n, 1280, np.int32)),
        "height": pa.array(np.full(n, 720, np.int32)),
        "clip_uri": pc.binary_join_element_wise(f"{Layout.CLIPS}/", clip_id, ".mp4", ""),
        "clip_bytes": pa.array(frames * 12_000),
        "license": pa.array(LICENSES).take(pa.array(source_hash % np.uint64(len(LICENSES)))),
        "status": status,
        "reason": reasons.take(pa.array(status_i)),
        "caption": pc.if_else(kept, caption, pa.scalar(None, pa.string())),
        "aesthetic_score": pa.array(rng.normal(5.0, 1.0, n)),
        "motion_score": pa.array(rng.gamma(2.0, 1.5, n)),
    }
    table = conform(pa.table({k: v for k, v in columns.items() if k in CLIPS.names}), CLIPS)
    return table, (source_hash % np.uint64(buckets)).astype(np.int64)


def write_partitioned(root: Path, table: pa.Table, bucket: np.ndarray, parts: int) -> int:
    """tables/clips/bucket=NNNNN/part-<hash>.parquet, `parts` files per bucket. Returns the files written."""
    order = np.argsort(bucket, kind="stable")
    table, bucket = table.take(pa.array(order)), bucket[order]
    values, starts = np.unique(bucket, return_index=True)
    ends = [*starts[1:], len(bucket)]
    written = 0
    for b, lo, hi in zip(values, starts, ends):
        folder = root / "tables" / "clips" / f"bucket={b:05d}"
        folder.mkdir(parents=True)
        for chunk in np.array_split(np.arange(lo, hi), parts):
            if len(chunk):
                part = table.slice(int(chunk[0]), len(chunk))
                ids = part["clip_id"]
                name = hashlib.sha256(f"{ids[0]}\n{ids[-1]}".encode()).hexdigest()[:16]
                pq.write_table(part, folder / f"part-{name}.parquet", compression="zstd")
                written += 1
    return written


def _timed(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times[0], min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m curate.bench.query")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--buckets", type=int, default=256)
    p.add_argument("--parts", type=int, default=2, help="part files per bucket")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--keep", help="write the outputs here (kept) instead of a temporary folder")
    p.add_argument("--no-cli", action="store_true", help="skip timing a whole `curate query` process")
    args = p.parse_args(argv)

    from curate.catalog import query

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        parts_out, single_out = base / "partitioned", base / "single"
        t = time.perf_counter()
        table, bucket = synthetic_clips(args.rows, args.buckets)
        made_s = time.perf_counter() - t
        t = time.perf_counter()
        files = write_partitioned(parts_out, table, bucket, args.parts)
        parts_s = time.perf_counter() - t
        (single_out / "tables").mkdir(parents=True)
        t = time.perf_counter()
        pq.write_table(table, single_out / "tables" / "clips.parquet", compression="zstd")
        single_s = time.perf_counter() - t
        size = sum(f.stat().st_size for f in (parts_out / "tables").rglob("*.parquet"))
        print(f"clips: {args.rows} rows, {len(CLIPS)} columns, generated in {made_s:.2f} s")
        print(f"partitioned: {files} files in {len(np.unique(bucket))} buckets, {size / 1e6:.0f} MB, written in {parts_s:.2f} s;"
              f" single file written in {single_s:.2f} s")  # fmt: skip

        # The query must see every row: licence counts against the generated table.
        want = {r["values"]: r["counts"] for r in pc.value_counts(table["license"]).to_pylist()}
        got = query(str(parts_out), "SELECT license, count(*) AS n FROM clips GROUP BY 1", "csv").splitlines()[1:]
        if {r.split(",")[0]: int(r.split(",")[1]) for r in got} != want:
            raise SystemExit(f"wrong licence counts: {got} != {want}")
        del table

        print(f"{'query':18s} {'partitioned first/best s':>26s} {'single file first/best s':>26s}")
        for label, sql in QUERIES.items():
            first, best = _timed(lambda sql=sql: query(str(parts_out), sql), args.repeat)
            row = f"{label:18s} {first:12.2f} {best:12.2f} "
            if "bucket" in sql:
                row += f"{'(no bucket column)':>26s}"
            else:
                s_first, s_best = _timed(lambda sql=sql: query(str(single_out), sql), args.repeat)
                row += f"{s_first:12.2f} {s_best:12.2f}  partitioned/single {best / s_best:.2f}"
            print(row)

        if args.no_cli:
            return 0
        sql = QUERIES["licence group-by"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "curate.cli", "query", str(parts_out), sql], env=env,
                              capture_output=True, text=True)  # fmt: skip
        cli_s = time.perf_counter() - t
        if done.returncode:
            raise SystemExit(f"curate query failed: {done.stderr}")
        print(f'curate query OUT "{sql}" (whole process, partitioned): {cli_s:.2f} s')
        print(done.stdout, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
