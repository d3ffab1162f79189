"""The Ray Data plan: ingest -> split -> select -> shards -> tables, read top to bottom.

Stages are plain callables over Arrow tables (see `stages/`); this module hands them to
`map_batches`, collects the (small) tables on the driver, and writes Parquet. Heavy bytes (clips,
shards) are written by the workers and travel as URIs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from curate.config import JobConfig, to_dict
from curate.inputs import InputError, list_dir, read_manifest
from curate.samples import generate_samples
from curate.score import check_scorers, score_clips
from curate.select import apply_select
from curate.storage import Output
from schemas import CLIPS, SCENES, SHARDS, SOURCES, ClipStatus, SourceStatus, conform
from stages.ingest import Ingest, fold_duplicates
from stages.shards import WriteShards, assign_shards
from stages.split import SPLIT, Split, flatten

log = logging.getLogger("curate")


@dataclass
class Summary:
    output: str
    sources_ok: int
    sources_error: int
    scenes: int
    clips_kept: int
    clips_filtered: int
    clips_error: int
    hours_in: float
    hours_out: float
    shards: int
    wall_s: float
    skipped_files: int = 0

    def text(self) -> str:
        return (
            f"curate: done in {self.wall_s:.1f} s -> {self.output}\n"
            f"  sources  {self.sources_ok} ok, {self.sources_error} error"
            + (f" ({self.skipped_files} non-video files skipped)" if self.skipped_files else "")
            + f"\n  scenes   {self.scenes}\n"
            f"  clips    {self.clips_kept} kept, {self.clips_filtered} filtered, {self.clips_error} error\n"
            f"  hours    {self.hours_in:.4f} in, {self.hours_out:.4f} out\n"
            f"  shards   {self.shards}"
        )


# ------------------------------------------------------------------------------------------- Ray


def init_ray(cfg: JobConfig, address: str | None = None) -> None:
    """Use the running Ray (tests), a cluster (address / RAY_ADDRESS), or start a local instance."""
    import ray

    if ray.is_initialized():
        return
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        import curate
        import schemas
        import stages

        # Ship our packages to the cluster's workers; third-party libraries must be installed there.
        ray.init(address=address, runtime_env={"py_modules": [curate, stages, schemas]}, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=True)


def _map(table: pa.Table | list[pa.Table], stage, schema: pa.Schema, blocks: int = 0, batch_size: int | None = None) -> pa.Table:
    """Run `stage` over `table` with Ray Data and collect the result on the driver, order kept.

    `table` is cut into about `blocks` blocks (one Ray task each), or taken as given when a list.
    """
    import ray

    if isinstance(table, pa.Table):
        n = table.num_rows
        size = max(1, math.ceil(n / max(1, blocks)))
        table = [table.slice(i, size) for i in range(0, n, size)]
    if not table:
        return schema.empty_table()
    ds = ray.data.from_arrow(table).map_batches(stage, batch_format="pyarrow", batch_size=batch_size)
    parts = [t for t in ray.get(list(ds.to_arrow_refs())) if t.num_rows]
    return pa.concat_tables([t.cast(schema) for t in parts]) if parts else schema.empty_table()


def _blocks(cfg: JobConfig) -> int:
    import ray

    return max(1, int(ray.available_resources().get("CPU", 1) * cfg.ray.blocks_per_cpu))


# ------------------------------------------------------------------------------------------- the job


def read_inputs(cfg: JobConfig, out: Output) -> tuple[pa.Table, list[str]]:
    inp = cfg.input
    if inp.dir:
        return list_dir(inp)
    if inp.manifest:
        return read_manifest(inp), []
    if not out.is_local:
        raise InputError("input.samples writes sample videos under the output folder, which must be local")
    rows = generate_samples(out.path("samples"), inp.samples)
    keep = ("uri", "license", "title", "author", "source_url", "attribution")
    return pa.Table.from_pylist([{k: r.get(k) for k in keep} for r in rows]), []


def run_job(cfg: JobConfig, address: str | None = None) -> Summary:
    import ray

    t0 = time.time()
    check_scorers(cfg)
    out = Output(cfg.output)
    out.makedirs()
    out.write_text("job.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    inputs, skipped = read_inputs(cfg, out)
    log.info("%d input files (%d other files skipped)", inputs.num_rows, len(skipped))

    init_ray(cfg, address)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    blocks = _blocks(cfg)

    # ---- ingest: probe + hash every input; bad files become error rows
    sources = fold_duplicates(_map(inputs, Ingest(), SOURCES, blocks))
    ok = pc.sum(pc.equal(sources["status"], SourceStatus.OK)).as_py() or 0
    log.info("ingest: %d sources, %d ok", sources.num_rows, ok)

    # ---- split: detect scenes on a low-resolution decode, write clips
    split = _map(sources, Split(cfg.split, out.uri("clips")), SPLIT, blocks, batch_size=1)
    sources, scenes, windows = flatten(split)
    clips = _clips_table(windows, sources)
    log.info("split: %d scenes, %d clips", scenes.num_rows, clips.num_rows)

    # ---- score: motion, aesthetics, watermarks on the clip files (columns added, no row dropped)
    clips = score_clips(cfg, clips, blocks)
    # ---- select: the job's predicate over the scores; a kept clip that fails it becomes `filtered`
    clips = apply_select(clips, cfg.select.where)
    log.info("score + select: %d clips kept", int(pc.sum(pc.equal(clips["status"], ClipStatus.KEPT)).as_py() or 0) if clips.num_rows else 0)

    # ---- shards: kept clips into WebDataset tars
    kept = clips.filter(pc.equal(clips["status"], ClipStatus.KEPT))
    shards = SHARDS.empty_table()
    if kept.num_rows:
        kept = assign_shards(kept, cfg.shards)
        groups = [kept.filter(pc.equal(kept["shard"], s)) for s in pc.unique(kept["shard"]).to_pylist()]
        shards = _map(groups, WriteShards(cfg.shards, out.url), SHARDS)
        shard_of = dict(zip(kept["clip_id"].to_pylist(), kept["shard"].to_pylist()))
        clips = clips.set_column(
            clips.schema.get_field_index("shard"), "shard", pa.array([shard_of.get(c) for c in clips["clip_id"].to_pylist()], pa.string())
        )
    shards = shards.sort_by("shard")

    # ---- tables
    out.write_table("sources", conform(sources, SOURCES))
    out.write_table("scenes", conform(scenes, SCENES))
    out.write_table("clips", conform(clips, CLIPS))
    out.write_table("shards", conform(shards, SHARDS))

    summary = summarize(cfg, sources, scenes, clips, shards, time.time() - t0, len(skipped))
    out.write_text("summary.json", json.dumps(dataclasses.asdict(summary), indent=2) + "\n")
    return summary


def _clips_table(windows: pa.Table, sources: pa.Table) -> pa.Table:
    """Clip windows joined with what they inherit from their source (licence, attribution, fps, uri)."""
    inherit = sources.select(["source_id", "license", "title", "author", "source_url", "attribution", "fps", "uri"])
    inherit = inherit.rename_columns(["source_id", "license", "title", "author", "source_url", "attribution", "fps", "source_uri"])
    if windows.num_rows == 0:
        return CLIPS.empty_table()
    joined = windows.join(inherit, "source_id", join_type="left outer")
    return conform(joined, CLIPS).sort_by([("source_id", "ascending"), ("start_frame", "ascending")])


def summarize(cfg, sources, scenes, clips, shards, wall_s, skipped) -> Summary:
    def count(table, status):
        return int(pc.sum(pc.equal(table["status"], status)).as_py() or 0) if table.num_rows else 0

    def hours(table, column, mask):
        if not table.num_rows:
            return 0.0
        return float(pc.sum(pc.filter(table[column], mask)).as_py() or 0.0) / 3600

    return Summary(
        output=cfg.output,
        sources_ok=count(sources, SourceStatus.OK),
        sources_error=count(sources, SourceStatus.ERROR),
        scenes=scenes.num_rows,
        clips_kept=count(clips, ClipStatus.KEPT),
        clips_filtered=count(clips, ClipStatus.FILTERED),
        clips_error=count(clips, ClipStatus.ERROR),
        hours_in=hours(sources, "duration_s", pc.equal(sources["status"], SourceStatus.OK)) if sources.num_rows else 0.0,
        hours_out=hours(clips, "duration_s", pc.equal(clips["status"], ClipStatus.KEPT)) if clips.num_rows else 0.0,
        shards=shards.num_rows,
        wall_s=round(wall_s, 2),
        skipped_files=skipped,
    )


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="curate: %(message)s", stream=sys.stderr
    )
