"""The finalize: after the stream, the output made deterministic from what this run committed.

    commit/clips/rows + signature log ──► dedup groups (one task), decisions per bucket
    commit/sources/rows (this run) ──► sources (duplicates by content folded), scenes, per bucket
    commit/clips/rows (this run)   ──► clips (one row per clip_id), per bucket, with the dedup decisions
                                   ──► shards: bucket = hash(source_id) mod `shards.buckets`, each bucket
                                       packed on its own in (source_id, start_frame) order, so adding a
                                       source rewrites only its bucket's shards
                                   ──► tables, index.json, LICENSES.md, ATTRIBUTION.csv, data card, report

Whatever order the stream made rows in, the number of workers or the timing, the same inputs give the
same tables and the same shard bytes: membership and order come from hashes and sorted ids only.
"""

from __future__ import annotations

import io
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.layout import Layout
from curate.commit import RUN, CommitLog, latest_rows
from curate.config import JobConfig
from curate.plan import CLIP_ROWS, SOURCE_ROWS
from schemas import CLIPS, SCENES, SHARDS, SOURCES, TABLES, ClipStatus, Reason, conform
from stages.ingest import fold_duplicates

log = logging.getLogger("curate")


def _this_run(table: pa.Table | None, run: int) -> pa.Table | None:
    if table is None:
        return None
    table = table.filter(pc.equal(table[RUN], run))
    return latest_rows(table)


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


def embeddings(cfg: JobConfig, out_url: str, clip_ids: pa.Array) -> pa.Table:
    """clip_id -> CLIP embedding of the given clips, from the aesthetic step's log (dedup.embedding_similarity)."""
    from curate.score import aesthetic_key
    from stages.aesthetic import EMBEDDING_COLUMN
    from stages.dedup import EMBEDDING

    table = CommitLog(out_url, "aesthetic", aesthetic_key(cfg)).read(columns=["id", EMBEDDING_COLUMN])
    if table is None:
        return pa.table({"clip_id": pa.array([], pa.string()), EMBEDDING: pa.array([], pa.binary())})
    table = table.filter(pc.is_in(table["id"], clip_ids))
    return pa.table({"clip_id": table["id"], EMBEDDING: table[EMBEDDING_COLUMN].cast(pa.binary())})


def compact(out_url: str, steps) -> int:
    """Fold each committed step's parts where they have grown many, one Ray task a step (a fold of a
    large log streams it by id range: see CommitLog.compact; none of it on the driver); returns the
    folders folded."""
    import ray

    fold = ray.remote(num_cpus=1)(_compact_one)
    return sum(ray.get([fold.remote(out_url, step.name, step.key) for step in steps if step.key]))


def _compact_one(out_url: str, name: str, key: str) -> int:
    return int(CommitLog(out_url, name, key).compact())


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


# ------------------------------------------------------------------------------------------ on Ray, per bucket
#
# The driver holds no row: Ray tasks read this run's committed rows, a shuffle groups them by the bucket
# of their source (the shards' bucket), and one task per bucket writes that bucket's table parts and
# shards and returns one small row (its counts and its shards' rows). Dedup, the one global decision,
# runs first as one task over the narrow signature rows and leaves its decisions per bucket.

POS, PART, BUCKET = "_pos", "_part", "bucket"
PARTS_PER_TASK = 16
DEDUP_COLUMNS = ["id", "clip_id", "source_id", "scene_index", "status", "reason", "duration_s", "aesthetic_score", RUN]
MARKS = pa.schema([pa.field("clip_id", pa.string()), pa.field("status", pa.string()), pa.field("reason", pa.string()),
                   pa.field("dup_group", pa.string()), pa.field("duplicate_of", pa.string())])


def _bucket(source_ids: list, buckets: int | None) -> pa.Array:
    from stages.shards import bucket_of

    return pa.array([bucket_of(s, buckets) if buckets else 0 for s in source_ids], pa.int32())


marks_file = Layout.dedup_marks


def _read_run(parts: list[str], out_url: str, log_name: tuple[str, str], run: int, buckets: int | None, schema: pa.Schema) -> pa.Table:
    """Parts of a row log -> this run's rows in them, each with its part, its place there and its bucket."""
    log = CommitLog(out_url, *log_name)
    tables = []
    for p in parts:
        with log.fs.open(p, "rb") as f:
            t = pq.read_table(f)
        t = t.append_column(POS, pa.array(range(t.num_rows), pa.int64())).filter(pc.equal(t[RUN], run))
        if t.num_rows:
            t = conform(t, schema)
            t = t.append_column(PART, pa.array([p.rsplit("/", 1)[-1]] * t.num_rows, pa.string()))
            tables.append(t.append_column(BUCKET, _bucket(t["source_id"].to_pylist(), buckets)))
    if not tables:
        return pa.schema([*schema, pa.field(PART, pa.string()), pa.field(BUCKET, pa.int32())]).empty_table()
    return pa.concat_tables(tables)


def _map(parts: list[str], out_url: str, log_name, run: int, buckets: int | None, schema: pa.Schema, reducers: int):
    """A shuffle's map task: this run's rows of some parts, cut into one table per reducer (bucket mod reducers)."""
    rows = _read_run(parts, out_url, log_name, run, buckets, schema)
    which = pc.remainder(rows[BUCKET], reducers) if rows.num_rows else pa.array([], pa.int32())
    cut = tuple(rows.filter(pc.equal(which, r)) for r in range(reducers))
    return cut if reducers > 1 else cut[0]


def _reduce(fn, args: tuple, *tables: pa.Table) -> pa.Table | None:
    """A shuffle's reduce task: `fn(rows of one bucket, *args)` for each bucket it got; their results."""
    rows = pa.concat_tables([t for t in tables if t.num_rows]) if any(t.num_rows for t in tables) else None
    if rows is None:
        return None
    results = [fn(rows.filter(pc.equal(rows[BUCKET], b)), *args) for b in sorted(pc.unique(rows[BUCKET]).to_pylist())]
    return pa.concat_tables(results)


MAX_MAPS = 256  # map tasks of a shuffle at most (the driver holds maps x reducers object refs)


def _per_bucket(out_url: str, log_name, run: int, buckets: int | None, schema: pa.Schema, fn, args: tuple) -> pa.Table | None:
    """This run's rows of a row log, grouped by bucket with Ray tasks (map: read parts and cut by bucket;
    reduce: `fn` per bucket), the rows never on the driver; `fn`'s one-row results, or None for no rows."""
    import ray

    parts = CommitLog(out_url, *log_name).parts()
    if not parts:
        return None
    schema = pa.schema([*schema, pa.field(POS, pa.int64())])
    cpus = int(ray.cluster_resources().get("CPU", 1))
    reducers = max(1, min(buckets or 1, 2 * cpus))
    per_map = max(PARTS_PER_TASK, -(-len(parts) // MAX_MAPS))
    mapper = ray.remote(num_cpus=1, num_returns=reducers)(_map)
    maps = [mapper.remote(parts[i : i + per_map], out_url, log_name, run, buckets, schema, reducers) for i in range(0, len(parts), per_map)]
    if reducers == 1:
        maps = [[m] for m in maps]
    reducer = ray.remote(num_cpus=1)(_reduce)
    done = [t for t in ray.get([reducer.remote(fn, args, *(m[r] for m in maps)) for r in range(reducers)]) if t is not None]
    return pa.concat_tables(done) if done else None


def _latest(group: pa.Table) -> pa.Table:
    """One row per id (the later part wins a tie, as CommitLog.read's order), without the bookkeeping columns."""
    group = group.sort_by([(PART, "ascending"), (POS, "ascending")]).drop_columns([PART, POS, BUCKET])
    return latest_rows(group)


CLIP_LOG_SCHEMA = pa.schema([*CLIPS, pa.field("id", pa.string()), pa.field(RUN, pa.int64())])


def _source_log_schema() -> pa.Schema:
    from stages.split import SPLIT

    fields = [f for f in SPLIT if f.name != "clips"]
    return pa.schema([*fields, pa.field("id", pa.string()), pa.field(RUN, pa.int64())])


def _source_bucket(group: pa.Table, out_url: str, buckets: int | None) -> pa.Table:
    """One bucket's sources and scenes of this run, written as that bucket's table parts (sorted by
    source_id, and scene)."""
    from curate.storage import Output

    b = group[BUCKET][0].as_py() if buckets else None
    seen = _latest(group)
    sources = fold_duplicates(conform(seen, SOURCES))
    first, rows = {}, []
    for i, sid in enumerate(seen["source_id"].to_pylist()):
        if sid is not None:
            first.setdefault(sid, i)
    for sid, scenes in zip(seen["source_id"].to_pylist(), seen["scenes"].to_pylist()):
        if sid is not None and first.get(sid) is not None:
            rows += [{"source_id": sid, **s} for s in scenes or []]
            first[sid] = None  # one copy per source
    scenes = conform(pa.Table.from_pylist(rows, schema=SCENES) if rows else SCENES.empty_table(), SCENES)
    if scenes.num_rows:
        scenes = scenes.sort_by([("source_id", "ascending"), (SCENES.names[1], "ascending")])
    out = Output(out_url)
    out.write_bucket("sources", b, sources)
    out.write_bucket("scenes", b, scenes)
    return pa.table({BUCKET: pa.array([b], pa.int32()), "sources": [sources.num_rows], "scenes": [scenes.num_rows]})


def _clip_bucket(group: pa.Table, out_url: str, shard_cfg, dedup: bool) -> pa.Table:
    """One bucket's clips of this run: dedup decisions applied, packed into shards (unchanged ones kept),
    written as that bucket's part of `clips`. Returns one row: the bucket, its clips and its shards' rows."""
    from curate.resume import ShardPlans, shard_plan
    from curate.storage import Output
    from stages.shards import SORT_KEYS, WriteShards, assign_shards

    out = Output(out_url)
    b = group[BUCKET][0].as_py() if shard_cfg.buckets else None
    clips = conform(_latest(group), CLIPS).sort_by(SORT_KEYS)
    if dedup and out.exists(marks_file(b)):
        clips = _apply_marks(clips, pq.read_table(out.fs.open(out.path(marks_file(b)), "rb")))
    kept = clips.filter(pc.equal(clips["status"], ClipStatus.KEPT))
    store = ShardPlans(out, b)
    rows, plans, todo = [], {}, []
    if kept.num_rows:
        kept = assign_shards(kept, shard_cfg, Layout.SHARD_PREFIX)
        for name in pc.unique(kept["shard"]).to_pylist():
            part = kept.filter(pc.equal(kept["shard"], name))
            plans[name] = shard_plan(part)
            row = store.reusable(name, plans[name])
            rows.append(row) if row else todo.append(part)
        shard_of = dict(zip(kept["clip_id"].to_pylist(), kept["shard"].to_pylist()))
        clips = clips.set_column(clips.schema.get_field_index("shard"), "shard",
                                 pa.array([shard_of.get(c) for c in clips["clip_id"].to_pylist()], pa.string()))
    written = WriteShards(shard_cfg, out_url)(pa.concat_tables(todo)) if todo else SHARDS.empty_table()
    shards = pa.concat_tables([pa.Table.from_pylist(rows, schema=SHARDS), written.cast(SHARDS)]).sort_by("shard")
    store.save(plans, shards)
    out.write_bucket("clips", b, clips)
    return pa.table({BUCKET: pa.array([b], pa.int32()), "clips": [clips.num_rows], "reused": [len(rows)],
                     "shards": pa.array([shards.to_pylist()], pa.list_(pa.struct(list(SHARDS))))})


def _apply_marks(clips: pa.Table, marks: pa.Table) -> pa.Table:
    """The dedup task's decisions (status, reason, dup_group, duplicate_of per clip_id) put on the rows."""
    by_id = {r["clip_id"]: r for r in marks.to_pylist()}
    ids = clips["clip_id"].to_pylist()
    for name in ("status", "reason", "dup_group", "duplicate_of"):
        old = clips[name].to_pylist()
        values = [by_id[i][name] if i in by_id else v for i, v in zip(ids, old)]
        clips = clips.set_column(clips.schema.get_field_index(name), CLIPS.field(name), pa.array(values, CLIPS.field(name).type))
    return clips


def dedup_task(cfg: JobConfig, out_url: str, run: int) -> int:
    """The near-duplicate groups of this run's kept clips (run as one Ray task: the signatures and a few
    columns of every kept clip, about 300 bytes each): decisions written per bucket (work/dedup/), and
    the output's signature index (dedup/signatures.parquet). Returns the duplicates filtered."""
    from curate.dedup import mark_step, write_index
    from curate.storage import Output

    out = Output(out_url)
    if out.exists(Layout.DEDUP_MARKS):
        out.fs.rm(out.path(Layout.DEDUP_MARKS), recursive=True)
    rows = CommitLog(out_url, *CLIP_ROWS).read(columns=DEDUP_COLUMNS, latest=False)
    rows = _this_run(rows, run) if rows is not None else None
    if rows is None or rows.num_rows == 0:
        write_index(out, CLIPS.empty_table(), signatures(cfg, out_url, pa.array([], pa.string())))
        return 0
    clips = conform(rows, CLIPS)
    kept = clips.filter(pc.equal(clips["status"], ClipStatus.KEPT))
    sigs = signatures(cfg, out_url, kept["clip_id"])
    if cfg.dedup.embedding_similarity is not None:
        sigs = sigs.join(embeddings(cfg, out_url, kept["clip_id"]), "clip_id", join_type="left outer")
    marked = mark_step(cfg.dedup, clips, sigs)
    write_index(out, marked, sigs)
    grouped = marked.filter(pc.is_valid(marked["dup_group"]))
    changed = grouped.select(MARKS.names).cast(MARKS)
    buckets = _bucket(grouped["source_id"].to_pylist(), cfg.shards.buckets)
    for b in sorted(set(buckets.to_pylist())):
        buf = io.BytesIO()
        pq.write_table(changed.filter(pc.equal(buckets, b)), buf, compression="zstd")
        out.write_bytes(marks_file(b if cfg.shards.buckets else None), buf.getvalue())
    return int(pc.sum(pc.equal(marked["reason"], Reason.DUPLICATE)).as_py() or 0)


def finalize_tables(cfg: JobConfig, out, run: int) -> tuple[pa.Table, dict]:
    """This run's tables and shards, written per bucket on Ray. Returns (the shards table, counts)."""
    import ray

    buckets = cfg.shards.buckets
    dups = None
    if cfg.dedup is not None:
        dups = ray.get(ray.remote(num_cpus=1)(dedup_task).remote(cfg, out.url, run))
    done_sources = _per_bucket(out.url, SOURCE_ROWS, run, buckets, _source_log_schema(), _source_bucket, (out.url, buckets))
    done_clips = _per_bucket(out.url, CLIP_ROWS, run, buckets, CLIP_LOG_SCHEMA, _clip_bucket, (out.url, cfg.shards, cfg.dedup is not None))
    for names, done in ((("sources", "scenes"), done_sources), (("clips",), done_clips)):
        written = set(done[BUCKET].to_pylist()) if done is not None else set()
        for name in names:
            if not buckets and not written:  # no row this run: an empty file (with buckets: an empty folder)
                out.write_bucket(name, None, TABLES[name].empty_table())
            out.keep_buckets(name, written if buckets else None)
    shard_rows = [r for rs in (done_clips["shards"].to_pylist() if done_clips is not None else []) for r in rs]
    shards = pa.Table.from_pylist(shard_rows, schema=SHARDS).sort_by("shard") if shard_rows else SHARDS.empty_table()
    _remove_stale_plans(out, buckets, set(done_clips[BUCKET].to_pylist()) if done_clips is not None else set())
    counts = {"duplicates": dups, "reused_shards": int(pc.sum(done_clips["reused"]).as_py()) if done_clips is not None else 0}
    return shards, counts


def _remove_stale_plans(out, buckets: int | None, written: set[int]) -> None:
    """Shard plans of buckets this run has no clips in (and of the other layout) go."""
    keep = {Layout.shard_plans(b if buckets else None) for b in written}
    if Layout.shard_plans(None) not in keep and out.exists(Layout.shard_plans(None)):
        out.fs.rm(out.path(Layout.shard_plans(None)))
    if out.exists(Layout.SHARD_PLANS):
        for p in out.fs.ls(out.path(Layout.SHARD_PLANS), detail=False):
            if f"{Layout.SHARD_PLANS}/{p.rsplit('/', 1)[-1]}" not in keep:
                out.fs.rm(p)
