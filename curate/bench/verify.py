"""Benchmark: `curate verify` and `curate takedown` on synthetic shards, against the floor of reading
and hashing the same bytes once.

    python -m curate.bench.verify [--sources 40] [--clips 5] [--clip-kb 512] [--max-samples 20]

Builds an output folder with plain calls (no Ray, no video encoding: fake clip payloads), then
prints the floor (read + sha256 of every tar), verify, and a takedown of one source, each with its
ratio to the floor. verify reads each tar once, hashes it and parses it; a ratio near 1-2 means it
costs about one pass over the data.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from curate.layout import Layout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m curate.bench.verify")
    p.add_argument("--sources", type=int, default=40)
    p.add_argument("--clips", type=int, default=5, help="clips per source")
    p.add_argument("--clip-kb", type=int, default=512)
    p.add_argument("--max-samples", type=int, default=20)
    args = p.parse_args(argv)

    import pyarrow as pa
    import pyarrow.compute as pc
    import yaml

    from curate.config import to_dict
    from curate.release import prepare_clips, write_release
    from curate.storage import Output
    from curate.takedown import takedown
    from curate.verify import verify
    from schemas import CLIPS, SHARDS, SOURCES, conform
    from stages.policy import PolicyConfig
    from stages.shards import ShardConfig, WriteShards, assign_shards

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "out"
        out = Output(str(root))
        out.makedirs()
        (root / "clips").mkdir()
        policy, shard_cfg = PolicyConfig(), ShardConfig(max_samples=args.max_samples)
        job = {"name": "bench", "output": str(root), "shards": to_dict(shard_cfg), "policy": to_dict(policy)}
        out.write_text(Layout.JOB, yaml.safe_dump(job, sort_keys=False))
        sources, rows = [], []
        for i in range(args.sources):
            sid = f"{i:016x}"
            sources.append({"source_id": sid, "sha256": sid * 4, "uri": f"/v/{i}.mp4", "status": "ok",
                            "license": ["CC0-1.0", "CC-BY-4.0", "MIT"][i % 3], "author": "A"})  # fmt: skip
            for k in range(args.clips):
                path = root / "clips" / f"{sid}_{k}.mp4"
                path.write_bytes(hashlib.sha256(path.name.encode()).digest() * (args.clip_kb * 32))
                rows.append({"clip_id": f"{sid}_{k}", "source_id": sid, "start_frame": k * 10, "end_frame": k * 10 + 10,
                             "clip_uri": str(path), "clip_bytes": path.stat().st_size, "license": sources[-1]["license"],
                             "author": "A", "duration_s": 0.4, "status": "kept"})  # fmt: skip
        src = conform(pa.Table.from_pylist(sources), SOURCES)
        clips = prepare_clips(conform(pa.Table.from_pylist(rows), CLIPS), src, policy, out)
        kept = assign_shards(clips.filter(pc.equal(clips["status"], "kept")), shard_cfg, Layout.SHARD_PREFIX)
        t = time.perf_counter()
        shards = WriteShards(shard_cfg, out.url)(kept)
        write_s = time.perf_counter() - t
        clips = conform(kept, CLIPS)
        for name, table in (("sources", src), ("clips", clips), ("shards", conform(shards, SHARDS))):
            out.write_table(name, table)
        write_release(out, job, src, clips, shards)
        total = int(pc.sum(shards["bytes"]).as_py())

        t = time.perf_counter()
        for path in sorted((root / "shards").rglob("*.tar")):
            hashlib.sha256(path.read_bytes()).hexdigest()
        floor = time.perf_counter() - t
        t = time.perf_counter()
        problems = verify(str(root))
        verify_s = time.perf_counter() - t
        t = time.perf_counter()
        takedown(str(root), sources[len(sources) // 2]["source_id"], reason="bench")
        takedown_s = time.perf_counter() - t
        if problems:
            raise SystemExit(f"verify found problems in a fresh output: {problems[:3]}")

    mb = total / 1e6
    print(f"{shards.num_rows} shards, {kept.num_rows} samples, {mb:.0f} MB")
    print(f"floor (read + sha256)   {floor:7.3f} s  {mb / floor:8.0f} MB/s  1.00x")
    print(f"write shards            {write_s:7.3f} s  {mb / write_s:8.0f} MB/s  {write_s / floor:.2f}x")
    print(f"curate verify           {verify_s:7.3f} s  {mb / verify_s:8.0f} MB/s  {verify_s / floor:.2f}x")
    print(f"curate takedown (1 src) {takedown_s:7.3f} s                 {takedown_s / floor:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
