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

from curate.dedup import drop_from_index
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
    sources, clips, shards = (out.read_table(t) for t in ("sources", "clips", "shards"))
    clips = clips.sort_by([("source_id", "ascending"), ("start_frame", "ascending"), ("clip_id", "ascending")])
    sources = sources.sort_by("source_id")
    buckets = (job.get("shards") or {}).get("buckets")  # the layout the run wrote its tables in
    ids = set(match_sources(sources, [source]))
    if not ids and source in set(clips["source_id"].to_pylist()):
        ids = {source}
    if not ids:
        raise TakedownError(f"no source in {out_url} matches {source!r} (give a source_id, sha256, uri or source_url)")
    time = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(microsecond=0, tzinfo=None)

    rows = clips.to_pylist()
    drop = {r["clip_id"] for r in rows if r["source_id"] in ids and r["shard"]}
    touched = sorted({r["shard"] for r in rows if r["clip_id"] in drop})
    removed = {sid: sum(1 for r in rows if r["source_id"] == sid and r["status"] == ClipStatus.KEPT) for sid in ids}

    # ---- rewrite only the shards that held its clips
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
    for r in rows:
        if r["source_id"] in ids and r["status"] == ClipStatus.KEPT:
            r.update(status=ClipStatus.FILTERED, reason=Reason.TAKEDOWN, error=f"taken down: {reason or 'no reason given'}", shard=None)
    clips = conform(pa.Table.from_pylist(rows, schema=clips.schema), CLIPS)
    shards = conform(pa.Table.from_pylist([shard_rows[k] for k in sorted(shard_rows)], schema=shards.schema), SHARDS)
    info = {r["source_id"]: r for r in sources.to_pylist()}
    records = [
        {"source_id": sid, "request": source, "uri": info.get(sid, {}).get("uri"), "source_url": info.get(sid, {}).get("source_url"),
         "reason": reason, "time": time, "clips_removed": removed[sid], "shards_rewritten": touched}
        for sid in sorted(ids)
    ]  # fmt: skip
    takedowns = pa.concat_tables([read_takedowns(out).cast(TAKEDOWNS), pa.Table.from_pylist(records, schema=TAKEDOWNS)])
    out.write_table("takedowns", takedowns)
    out.write_table("clips", clips, buckets=buckets)
    out.write_table("shards", shards)
    drop_from_index(out, ids)  # a later run's dedup.against must not treat its clips as part of this dataset
    write_release(out, job)
    return {"request": source, "source_ids": sorted(ids), "reason": reason, "time": time,
            "clips_removed": sum(removed.values()), "shards_rewritten": touched}
