"""The finalize: after the stream, the output made deterministic from what this run committed.

    commit/sources/rows (this run) ──► sources (duplicates by content folded), scenes
    commit/clips/rows (this run)   ──► clips (one row per clip_id) ──► dedup groups (signature log)
                                   ──► shards: bucket = hash(source_id) mod `shards.buckets`, each bucket
                                       packed on its own in (source_id, start_frame) order, so adding a
                                       source rewrites only its bucket's shards
                                   ──► tables, index.json, LICENSES.md, ATTRIBUTION.csv, data card, report

Whatever order the stream made rows in, the number of workers or the timing, the same inputs give the
same tables and the same shard bytes: membership and order come from hashes and sorted ids only.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from curate.commit import RUN, CommitLog, latest_rows
from curate.config import JobConfig
from curate.plan import CLIP_ROWS, SOURCE_ROWS
from schemas import CLIPS, SCENES, SOURCES, conform
from stages.ingest import fold_duplicates

log = logging.getLogger("curate")


def _this_run(table: pa.Table | None, run: int) -> pa.Table | None:
    if table is None:
        return None
    table = table.filter(pc.equal(table[RUN], run))
    return latest_rows(table)


def committed_sources(out_url: str, run: int) -> tuple[pa.Table, pa.Table]:
    """(sources, scenes) of this run, sorted by source_id (and scene)."""
    seen = _this_run(CommitLog(out_url, *SOURCE_ROWS).read(latest=False), run)
    if seen is None or seen.num_rows == 0:
        return SOURCES.empty_table(), SCENES.empty_table()
    sources = fold_duplicates(conform(seen, SOURCES))
    first = {}
    for i, sid in enumerate(seen["source_id"].to_pylist()):
        if sid is not None:
            first.setdefault(sid, i)
    rows = []
    for sid, scenes in zip(seen["source_id"].to_pylist(), seen["scenes"].to_pylist()):
        if sid is not None and first.get(sid) is not None:
            rows += [{"source_id": sid, **s} for s in scenes or []]
            first[sid] = None  # one copy per source
    scenes = conform(pa.Table.from_pylist(rows, schema=SCENES) if rows else SCENES.empty_table(), SCENES)
    if scenes.num_rows:
        scenes = scenes.sort_by([("source_id", "ascending"), (SCENES.names[1], "ascending")])
    return sources, scenes


def committed_clips(out_url: str, run: int) -> pa.Table:
    """This run's clip rows, one per clip_id, sorted by (source_id, start_frame)."""
    rows = _this_run(CommitLog(out_url, *CLIP_ROWS).read(latest=False), run)
    if rows is None or rows.num_rows == 0:
        return CLIPS.empty_table()
    return conform(rows, CLIPS).sort_by([("source_id", "ascending"), ("start_frame", "ascending"), ("clip_id", "ascending")])


def signatures(cfg: JobConfig, out_url: str, clip_ids: pa.Array) -> pa.Table:
    """clip_id -> signature of the given clips, from the signature step's log."""
    from curate.dedup import SIGNATURE, signature_step
    from schemas import SIGNATURE_ROWS

    step = signature_step(cfg.dedup)
    table = CommitLog(out_url, step.name, step.key).read(columns=["id", SIGNATURE, "_signature_error"])
    if table is None:
        return SIGNATURE_ROWS.empty_table()
    table = table.filter(pc.is_in(table["id"], clip_ids))
    return pa.table({"clip_id": table["id"], "signature": table[SIGNATURE], "error": table["_signature_error"]}, schema=SIGNATURE_ROWS)


def compact(out_url: str, steps) -> int:
    """Fold each committed step's parts into one where they have grown many; returns the folders folded."""
    folded = 0
    for step in steps:
        if step.key:
            folded += CommitLog(out_url, step.name, step.key).compact()
    return folded


def prune_rows(out_url: str, run: int) -> int:
    """After a finished run: remove the parts of the row logs that no longer hold a row of it (earlier
    runs', written in other blocks, or of inputs gone since). Returns the parts removed."""
    import pyarrow.parquet as pq

    removed = 0
    for log_name in (SOURCE_ROWS, CLIP_ROWS):
        commit = CommitLog(out_url, *log_name)
        for p in commit.parts():
            with commit.fs.open(p, "rb") as f:
                runs = pq.read_table(f, columns=[RUN])[RUN]
            if not pc.any(pc.equal(runs, run)).as_py():
                commit.fs.rm(p)
                removed += 1
    return removed
