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

from curate.captioning import caption_step
from curate.dedup import check_against, dedup_step, write_index
from curate.config import JobConfig, to_dict
from curate.inputs import InputError, list_dir, read_manifest
from curate.release import prepare_clips, write_release
from curate.latents import check_latents, encode_clips
from curate.resume import CachedSplit, IngestCache, ShardPlans, cached_splits, shard_plan
from curate.report import write_report
from curate.samples import generate_samples
from curate.score import check_scorers, score_clips
from curate.select import apply_select, split_where
from curate.storage import Output
from curate.tiny import use_tiny_models
from schemas import CLIPS, SCENES, SHARDS, SOURCES, ClipStatus, Reason, SourceStatus, conform
from stages.ingest import Ingest, fold_duplicates
from stages.shards import WriteShards, assign_shards
from stages.motion import settings_key as motion_settings_key
from stages.split import SPLIT, flatten

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
    stage_s: dict = dataclasses.field(default_factory=dict)  # wall seconds per step

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
        # "local": a new instance even when `ray start` left a cluster address on this machine.
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, include_dashboard=False, log_to_driver=True)


class Runner:
    """Runs stages with Ray Data; starts (or joins) Ray only when there is work to hand out."""

    def __init__(self, cfg: JobConfig, address: str | None):
        self.cfg, self.address, self.started = cfg, address, False

    def map(self, table: pa.Table | list[pa.Table], stage, schema: pa.Schema, batch_size: int | None = None) -> pa.Table:
        """Run `stage` over `table` and collect the result on the driver, order kept.

        A table is cut into about `ray.blocks_per_cpu` blocks per CPU (one Ray task each); a list of
        tables is taken as the blocks.
        """
        if isinstance(table, pa.Table):
            if table.num_rows == 0:
                return schema.empty_table()
            size = max(1, math.ceil(table.num_rows / self.blocks()))
            table = [table.slice(i, size) for i in range(0, table.num_rows, size)]
        if not table:
            return schema.empty_table()
        import ray

        self.start()
        ds = ray.data.from_arrow(table).map_batches(stage, batch_format="pyarrow", batch_size=batch_size)
        parts = [t for t in ray.get(list(ds.to_arrow_refs())) if t.num_rows]
        return pa.concat_tables([t.cast(schema) for t in parts]) if parts else schema.empty_table()

    def start(self) -> None:
        if not self.started:
            import ray

            init_ray(self.cfg, self.address)
            ray.data.DataContext.get_current().execution_options.preserve_order = True
            self.started = True

    def blocks(self) -> int:
        import ray

        self.start()
        return max(1, int(ray.available_resources().get("CPU", 1) * self.cfg.ray.blocks_per_cpu))


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
    cfg = use_tiny_models(cfg)  # `tiny` model names -> folders in the cache (made on first use)
    check_scorers(cfg)  # missing weights stop the job before any work
    if cfg.dedup is not None:
        check_against(cfg.dedup)
    if cfg.caption is not None:
        cfg.caption.check()
    if cfg.latents is not None:
        check_latents(cfg.latents)
    out = Output(cfg.output)
    with out.lock():
        return _run(cfg, out, Runner(cfg, address))


class _Clock:
    """Wall seconds per pipeline step, for the summary and the report."""

    def __init__(self):
        self.t, self.stages = time.time(), {}

    def lap(self, name: str) -> None:
        now = time.time()
        self.stages[name] = round(now - self.t, 3)
        self.t = now


def _run(cfg: JobConfig, out: Output, runner: Runner) -> Summary:
    t0 = time.time()
    clock = _Clock()
    if out.remove_temporaries():
        log.info("removed temporary files of an interrupted run")
    out.write_text("job.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if cfg.caption is not None:
        cfg.caption.check()  # missing weights stop the job here, before any work
    inputs, skipped = read_inputs(cfg, out)
    log.info("%d input files (%d other files skipped)", inputs.num_rows, len(skipped))
    clock.lap("inputs")

    # ---- ingest: hash + probe every input not seen unchanged before; bad files become error rows
    cache = IngestCache(out)
    reused, todo, keys = cache.split(inputs)
    ingested = runner.map(todo, Ingest(), SOURCES)
    cache.save(ingested, keys)
    sources = fold_duplicates(pa.concat_tables([pa.Table.from_pylist(reused, schema=SOURCES), ingested]))
    ok = pc.sum(pc.equal(sources["status"], SourceStatus.OK)).as_py() or 0
    log.info("ingest: %d sources, %d ok (%d unchanged since the last run)", sources.num_rows, ok, len(reused))
    clock.lap("ingest")

    # ---- split: detect scenes on a low-resolution decode, write clips (sources split before are reused)
    done, todo = cached_splits(out, cfg.split, sources)
    # With motion from codec vectors, the one-pass split measures it from the source's own vectors as it decodes.
    motion = cfg.motion if cfg.motion is not None and cfg.motion.method == "vectors" else None
    fresh = runner.map(todo, CachedSplit(cfg.split, out.url, motion), SPLIT, batch_size=1)
    split = pa.concat_tables([pa.Table.from_pylist(done, schema=SPLIT), fresh])
    split = split.take(pc.sort_indices(split, [("source_id", "ascending")]))
    sources, scenes, windows = flatten(split, motion_settings_key(motion) if motion else None)
    clips = _clips_table(windows, sources)
    log.info("split: %d scenes, %d clips (%d sources reused)", scenes.num_rows, clips.num_rows, len(done))
    clock.lap("split")

    # ---- score: motion, aesthetics, watermarks on the clip files (columns added, no row dropped;
    #      clips scored before with the same settings are not scored again)
    clips = score_clips(cfg, clips, runner, out)
    # ---- select: the job's predicate over the scores; a kept clip that fails it becomes `filtered`
    before_caption, after_caption = split_where(cfg.select.where)
    clips = apply_select(clips, before_caption)
    log.info("score + select: %d clips kept", int(pc.sum(pc.equal(clips["status"], ClipStatus.KEPT)).as_py() or 0) if clips.num_rows else 0)
    clock.lap("score")

    # ---- dedup: near-duplicates of a better clip (of this run or of `dedup.against`) are filtered
    #      before anything is spent on them (captions, latents)
    signatures = None
    if cfg.dedup is not None and clips.num_rows:
        clips, signatures = dedup_step(cfg.dedup, runner, clips, out)
        log.info("dedup: %d duplicates filtered", int(pc.sum(pc.equal(clips["reason"], Reason.DUPLICATE)).as_py() or 0))
        clock.lap("dedup")

    # ---- policy: licences, opt-outs and recorded takedowns decide which clips may reach a shard
    clips = prepare_clips(clips, sources, cfg.policy, out)

    # ---- caption: kept clips through the VLM (CPU preparation and generation as two actor pools);
    #      conditions of the predicate on caption columns (caption_clip_score, ...) apply after it
    if cfg.caption is not None:
        clips = caption_step(cfg.caption, runner, clips, out)  # captions made before are reused
        clips = apply_select(clips, after_caption)
        clock.lap("caption")

    # ---- encode: VAE latents (+ caption embeddings) of the kept clips, files under OUT/latents/
    if cfg.latents is not None and clips.num_rows:
        clips = encode_clips(cfg.latents, out, clips, start_ray=runner.start)
        log.info("latents: %d clips encoded", pc.sum(pc.is_valid(clips["latent_uri"])).as_py() or 0)
        clock.lap("latents")

    # ---- shards: kept clips into WebDataset tars (unchanged shards are not rewritten)
    clips, shards = _write_shards(cfg, out, runner, clips)
    clock.lap("shards")

    # ---- tables
    out.write_table("sources", conform(sources, SOURCES))
    out.write_table("scenes", conform(scenes, SCENES))
    out.write_table("clips", conform(clips, CLIPS))
    out.write_table("shards", conform(shards, SHARDS))
    if signatures is not None:
        write_index(out, clips, signatures)  # what later runs' dedup.against reads
    clock.lap("tables")
    # ---- release: index.json, LICENSES.md, ATTRIBUTION.csv, the data card
    write_release(out, to_dict(cfg), sources, conform(clips, CLIPS), conform(shards, SHARDS))

    summary = summarize(cfg, sources, scenes, clips, shards, time.time() - t0, len(skipped))
    summary.stage_s = clock.stages
    out.write_text("summary.json", json.dumps(dataclasses.asdict(summary), indent=2) + "\n")
    write_report(out.url)
    return summary


def _write_shards(cfg: JobConfig, out: Output, runner: Runner, clips: pa.Table) -> tuple[pa.Table, pa.Table]:
    kept = clips.filter(pc.equal(clips["status"], ClipStatus.KEPT))
    plans_store = ShardPlans(out)
    rows, plans, todo = [], {}, []
    if kept.num_rows:
        kept = assign_shards(kept, cfg.shards)
        for name in pc.unique(kept["shard"]).to_pylist():
            group = kept.filter(pc.equal(kept["shard"], name))
            plans[name] = shard_plan(group)
            row = plans_store.reusable(name, plans[name])
            rows.append(row) if row else todo.append(group)
        shard_of = dict(zip(kept["clip_id"].to_pylist(), kept["shard"].to_pylist()))
        clips = clips.set_column(
            clips.schema.get_field_index("shard"), "shard", pa.array([shard_of.get(c) for c in clips["clip_id"].to_pylist()], pa.string())
        )
    written = runner.map(todo, WriteShards(cfg.shards, out.url), SHARDS)
    shards = pa.concat_tables([pa.Table.from_pylist(rows, schema=SHARDS), written]).sort_by("shard")
    # shards of an earlier run that the current plan no longer has
    if out.exists("shards"):
        current = set(plans)
        for p in out.fs.find(out.path("shards")):
            if p.rsplit("/", 2)[-2] == "shards" and f"shards/{p.rsplit('/', 1)[1]}" not in current:
                out.fs.rm(p)
    plans_store.save(plans, shards)
    log.info("shards: %d (%d unchanged)", shards.num_rows, len(rows))
    return clips, shards


def _clips_table(windows: pa.Table, sources: pa.Table) -> pa.Table:
    """Clip windows joined with what they inherit from their source (licence, attribution, uri)."""
    inherit = sources.select(["source_id", "license", "title", "author", "source_url", "attribution", "uri"])
    inherit = inherit.rename_columns(["source_id", "license", "title", "author", "source_url", "attribution", "source_uri"])
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
