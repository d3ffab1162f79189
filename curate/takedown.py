"""`curate takedown OUT --source ID_OR_URI`: remove a source's clips from a finished output.

Only the shards that held its clips are rewritten (the other samples copied over byte for byte, with
the same fixed tar headers; a shard left empty is deleted). Its clips become `filtered`, reason
`takedown`; its clip files are deleted; the shards table, index.json, LICENSES.md, ATTRIBUTION.csv
and the data card are rewritten; the `takedowns` table records who, when and why. A later run of
the job into the same folder reads that table and keeps the source out.
"""

from __future__ import annotations

import datetime as dt
import io
import tarfile

import pyarrow as pa
import pyarrow.compute as pc

from curate.dedup import drop_from_index
from curate.layout import Layout
from curate.release import TakedownError, match_sources, read_job, read_takedowns, write_release
from curate.storage import Output
from schemas import CLIPS, SHARDS, TAKEDOWNS, ClipStatus, Reason, conform
from stages.shards import write_tar


def _samples(data: bytes, drop: set[str]):
    """The samples of a tar, in order, as dicts of bytes, without the keys in `drop`."""
    current: dict | None = None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if key in drop:
                continue
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current


def takedown(out_url: str, source: str, reason: str | None = None, now: dt.datetime | None = None) -> dict:
    """Take down the source named by `source` (source id, sha256, uri, other name or source URL).

    Returns the takedowns row written. Raises TakedownError when nothing matches.
    """
    out = Output(out_url)
    with out.lock():  # one writer per output: not while a run (or another takedown) writes here
        return _takedown(out, out_url, source, reason, now)


def _takedown(out: Output, out_url: str, source: str, reason: str | None, now: dt.datetime | None) -> dict:
    job = read_job(out)
    buckets = (job.get("shards") or {}).get("buckets")  # the layout the run wrote its tables in
    # Per bucket: a partitioned clips table is read and rewritten only in the buckets of the sources
    # taken down (the sources table is scanned in batches for the name; the shards table, a row per
    # shard, is read whole); an output whose clips are one file is read and written whole.
    partitioned = bool(buckets) and out.fs.isdir(out.path(Layout.table_folder("clips")))
    info = _find_sources(out, source)
    ids = set(info) or {source}  # nothing in sources: perhaps a source id that only its clips still carry
    parts = _clips(out, ids, buckets, partitioned)  # {bucket (None: the whole table): its clip rows}
    values = pa.array(sorted(ids), pa.string())
    if not info and not any(pc.any(pc.is_in(t["source_id"], value_set=values)).as_py() for t in parts.values()):
        raise TakedownError(f"no source in {out_url} matches {source!r} (give a source_id, sha256, uri or source_url)")
    time = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(microsecond=0, tzinfo=None)

    rows = [r for table in parts.values() for r in table.to_pylist()]
    drop = {r["clip_id"] for r in rows if r["source_id"] in ids and r["shard"]}
    touched = sorted({r["shard"] for r in rows if r["clip_id"] in drop})
    removed = {sid: sum(1 for r in rows if r["source_id"] == sid and r["status"] == ClipStatus.KEPT) for sid in ids}

    # ---- rewrite only the shards that held its clips (a shard holds the clips of one bucket)
    shards = out.read_table("shards")
    shard_rows = {r["shard"]: r for r in shards.to_pylist()}
    for name in touched:
        with out.fs.open(out.path(name), "rb") as f:
            data = f.read()
        left = [r for r in rows if r["shard"] == name and r["clip_id"] not in drop]
        if not left:
            out.fs.rm(out.path(name))
            del shard_rows[name]
            continue
        size, sha = write_tar(out.fs, out.path(name), _samples(data, drop))
        shard_rows[name] = {**shard_rows[name], "n_samples": len(left), "bytes": size, "sha256": sha,
                            "licenses": sorted({r["license"] for r in left if r["license"] is not None})}

    # ---- tables
    note = f"taken down: {reason or 'no reason given'}"
    for b, table in parts.items():
        changed = [dict(r, status=ClipStatus.FILTERED, reason=Reason.TAKEDOWN, error=note, shard=None)
                   if r["source_id"] in ids and r["status"] == ClipStatus.KEPT else r for r in table.to_pylist()]  # fmt: skip
        clips = conform(pa.Table.from_pylist(changed, schema=table.schema), CLIPS)
        if b is None:
            out.write_table("clips", clips, buckets=buckets)
        else:
            _write_bucket(out, "clips", b, clips)
    shards = conform(pa.Table.from_pylist([shard_rows[k] for k in sorted(shard_rows)], schema=shards.schema), SHARDS)
    records = [
        {"source_id": sid, "request": source, "uri": info.get(sid, {}).get("uri"), "source_url": info.get(sid, {}).get("source_url"),
         "reason": reason, "time": time, "clips_removed": removed[sid], "shards_rewritten": touched}
        for sid in sorted(ids)
    ]  # fmt: skip
    takedowns = pa.concat_tables([read_takedowns(out).cast(TAKEDOWNS), pa.Table.from_pylist(records, schema=TAKEDOWNS)])
    out.write_table("takedowns", takedowns)
    out.write_table("shards", shards)
    drop_from_index(out, ids)  # a later run's dedup.against must not treat its clips as part of this dataset
    write_release(out, job)
    return {"request": source, "source_ids": sorted(ids), "reason": reason, "time": time,
            "clips_removed": sum(removed.values()), "shards_rewritten": touched}


_NAMES = ("source_id", "sha256", "uri", "source_url", "alias_uris")


def _find_sources(out: Output, name: str) -> dict[str, dict]:
    """source_id -> its row (the name columns) for every source `name` names, scanning the sources
    table in batches (never whole)."""
    data = out.table_dataset("sources", bucket=False) if out.has_table("sources") else None
    if data is None:
        return {}
    found = {}
    for batch in data.to_batches(columns=[c for c in _NAMES if c in data.schema.names], batch_size=65536):
        table = pa.Table.from_batches([batch])
        hits = match_sources(table, [name])
        if hits:
            rows = table.filter(pc.is_in(table["source_id"], value_set=pa.array(sorted(hits), pa.string())))
            found.update({r["source_id"]: r for r in rows.to_pylist()})
    return found


_ORDER = [("source_id", "ascending"), ("start_frame", "ascending"), ("clip_id", "ascending")]


def _clips(out: Output, ids: set[str], buckets: int | None, partitioned: bool) -> dict:
    """{bucket: its clip rows, sorted} for the buckets holding `ids`, or {None: the whole table} when the
    clips are one file."""
    if partitioned:
        from stages.shards import bucket_of

        wanted = sorted({bucket_of(s, buckets) for s in ids})
        data = out.table_dataset("clips", bucket=True)
        return {b: data.to_table(filter=pc.field("bucket") == b).drop_columns(["bucket"]).sort_by(_ORDER) for b in wanted}
    return {None: out.read_table("clips").sort_by(_ORDER)}


def _write_bucket(out: Output, name: str, bucket: int, table: pa.Table) -> None:
    """Replace one bucket's part(s) of a partitioned table with `table` as its one part."""
    from curate.storage import is_table_part

    out.write_bucket(name, bucket, table)
    keep = out.path(Layout.table_part(name, bucket))
    folder = out.path(Layout.table_bucket(name, bucket))
    for p in out.fs.find(folder):
        if p != keep and is_table_part(p[len(folder):]):
            out.fs.rm(p)
