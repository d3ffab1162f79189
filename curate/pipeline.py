"""The job, read top to bottom: the input listing, the streaming plan (curate/plan.py), the finalize.

The stream runs every stage at once and commits each result as it is made (curate/commit.py); the
driver only counts. The finalize then makes the output deterministic from this run's commits: dedup
groups, hash-bucketed shards, the tables, the release files and the report (curate/finalize.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from curate.commit import run_stamp
from curate.config import JobConfig, to_dict
from curate.dedup import check_against, mark_step, write_index
from curate.finalize import committed_clips, committed_sources, compact, prune_rows
from curate.finalize import signatures as committed_signatures
from curate.inputs import InputError, list_dir, read_manifest
from curate.latents import check_latents
from curate.plan import build, clip_steps
from curate.release import write_release
from curate.report import write_report
from curate.resume import ShardPlans, shard_plan
from curate.samples import generate_samples
from curate.score import check_scorers
from curate.storage import Output
from curate.tiny import use_tiny_models
from schemas import CLIPS, SCENES, SHARDS, SOURCES, ClipStatus, Reason, SourceStatus, conform
from stages.shards import WriteShards, assign_shards

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


_VERBOSE = False  # set by configure_logging: Ray's own logs and progress bars on the terminal too


def init_ray(cfg: JobConfig, address: str | None = None) -> None:
    """Use the running Ray (tests), a cluster (address / RAY_ADDRESS), or start a local instance.

    By default a person sees curate's lines only: Ray's INFO chatter, workers' output and Ray Data's
    per-operator progress stay in Ray's log folder (/tmp/ray/session_*/logs), on the terminal with -v."""
    import ray

    quiet_ray()
    if not ray.is_initialized():
        address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
        common = {"log_to_driver": _VERBOSE, "logging_level": logging.INFO if _VERBOSE else logging.WARNING}
        if address:
            import curate
            import schemas
            import stages

            # Ship our packages to the cluster's workers; third-party libraries must be installed there.
            # (folders, not module objects: a submitted job's runtime_env is deep-copied to merge it)
            py_modules = [os.path.dirname(m.__file__) for m in (curate, stages, schemas)]
            ray.init(address=address, runtime_env={"py_modules": py_modules}, **common)
        else:
            # "local": a new instance even when `ray start` left a cluster address on this machine.
            ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, include_dashboard=False, **common)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = _VERBOSE and sys.stderr.isatty()
    ctx.print_on_execution_start = _VERBOSE
    ctx.execution_options.preserve_order = False  # a straggler holds nothing back; the finalize orders
    # The plan sizes every operator's requests to fit beside the others (plan.Resources). Ray Data's own
    # per-operator reservation on top of that held the steps after the split to a sliver of the CPUs
    # until the split was done everywhere (5 of 125 caption batches before the last split, 120 without).
    ctx.op_resource_reservation_enabled = False
    if not _VERBOSE:  # its per-operator memory advice (model actors use what they use) is for -v
        try:
            ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
        except AttributeError:  # another Ray version
            pass


# Lines Ray prints on every run that tell a curate user nothing they can act on.
_RAY_NOISE = ("Progress bars disabled", "Token authentication is enabled for this Ray cluster")


class _NoNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in _RAY_NOISE)


def quiet_ray() -> None:
    """Ray Data's console lines at WARNING unless verbose (its log file keeps everything), without the
    lines in _RAY_NOISE."""
    import ray.data  # noqa: F401,I001  (configures the ray.data loggers)

    level = logging.INFO if _VERBOSE else logging.WARNING
    for name in ("ray.data", "ray"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(level)
                if not _VERBOSE and not any(isinstance(f, _NoNoise) for f in handler.filters):
                    handler.addFilter(_NoNoise())
    if not _VERBOSE:
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_NoNoise())


def run_tasks(table: pa.Table | list[pa.Table], stage, schema: pa.Schema, batch_size: int | None = None) -> pa.Table:
    """Run `stage` over small work (a list of tables, one block each) as Ray tasks and collect the
    results; for the finalize's bounded work only (one row per shard), never for clip rows."""
    import ray

    blocks = [t for t in ([table] if isinstance(table, pa.Table) else table) if t.num_rows]
    if not blocks:
        return schema.empty_table()
    ds = ray.data.from_arrow(blocks).map_batches(stage, batch_format="pyarrow", batch_size=batch_size)
    parts = [t.cast(schema) for t in ds.iter_batches(batch_size=None, batch_format="pyarrow") if t.num_rows]
    return pa.concat_tables(parts) if parts else schema.empty_table()


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
        return _run(cfg, out, address)


class _Clock:
    """Wall seconds per pipeline step, for the summary and the report."""

    def __init__(self):
        self.t, self.stages = time.time(), {}

    def lap(self, name: str) -> None:
        now = time.time()
        self.stages[name] = round(now - self.t, 3)
        self.t = now


def _run(cfg: JobConfig, out: Output, address: str | None, inputs: pa.Table | None = None, steps=None, source=None) -> Summary:
    """The job. `inputs`, `steps` and `source` replace the listing, the clip steps and the per-source task
    (the scale benchmark runs this driver with synthetic sources and stage stand-ins)."""
    t0 = time.time()
    clock = _Clock()
    if out.remove_temporaries():
        log.info("removed temporary files of an interrupted run")
    out.write_text("job.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    inputs, skipped = read_inputs(cfg, out) if inputs is None else (inputs, [])
    log.info("%d input files (%d other files skipped)", inputs.num_rows, len(skipped))
    clock.lap("inputs")

    # ---- the stream: ingest + split per source, then every clip step at once, each committing its results
    init_ray(cfg, address)
    run = run_stamp()
    steps = clip_steps(cfg) if steps is None else steps
    # With motion from codec vectors, the one-pass split measures it from the source's own vectors as it decodes.
    motion = cfg.motion if cfg.motion is not None and cfg.motion.method == "vectors" else None
    progress = Progress(inputs.num_rows, [s.name for s in steps])
    for counts in build(cfg, inputs, out.url, run, motion, steps, source).iter_batches(batch_size=None, batch_format="pyarrow"):
        progress.add(counts)
    progress.done()
    clock.lap("stream")

    # ---- finalize: this run's committed rows, dedup groups, hash-bucketed shards, tables, release
    sources, scenes = committed_sources(out.url, run)
    clips = committed_clips(out.url, run)
    ok = pc.sum(pc.equal(sources["status"], SourceStatus.OK)).as_py() or 0 if sources.num_rows else 0
    log.info("split: %d sources, %d ok; %d scenes, %d clips", sources.num_rows, ok, scenes.num_rows, clips.num_rows)
    signatures = None
    if cfg.dedup is not None and clips.num_rows:
        kept = clips.filter(pc.equal(clips["status"], ClipStatus.KEPT))
        signatures = committed_signatures(cfg, out.url, kept["clip_id"])
        clips = mark_step(cfg.dedup, clips, signatures)
        log.info("dedup: %d duplicates filtered", int(pc.sum(pc.equal(clips["reason"], Reason.DUPLICATE)).as_py() or 0))
    clips, shards = _write_shards(cfg, out, clips)
    clock.lap("shards")

    # tables hive-partitioned by the bucket of the source (the shards' bucket): bucket=NNNNN/part-00000.parquet
    buckets = cfg.shards.buckets
    out.write_table("sources", conform(sources, SOURCES), buckets=buckets)
    out.write_table("scenes", conform(scenes, SCENES), buckets=buckets)
    out.write_table("clips", conform(clips, CLIPS), buckets=buckets)
    out.write_table("shards", conform(shards, SHARDS))
    if signatures is not None:
        write_index(out, clips, signatures)  # what later runs' dedup.against reads
    prune_rows(out.url, run)
    compact(out.url, steps)
    clock.lap("tables")
    # ---- release: index.json, LICENSES.md, ATTRIBUTION.csv, the data card
    write_release(out, to_dict(cfg), sources, conform(clips, CLIPS), conform(shards, SHARDS))

    summary = summarize(cfg, sources, scenes, clips, shards, time.time() - t0, len(skipped))
    summary.stage_s = clock.stages
    out.write_text("summary.json", json.dumps(dataclasses.asdict(summary), indent=2) + "\n")
    write_report(out.url)
    return summary


class Progress:
    """What a person watching sees: clips committed, kept, captioned, encoded, with a rate; a line every
    few seconds (Ray Data's own per-operator bars show on a terminal with `-v`)."""

    def __init__(self, sources: int, steps: list[str], every_s: float = 10.0):
        self.sources, self.steps, self.every_s = sources, steps, every_s
        self.t0 = self.last = time.time()
        self.n = {"clips": 0, "kept": 0, "captioned": 0, "encoded": 0}
        log.info("stream: %d sources through split -> %s -> commit", sources, " -> ".join(steps) or "(no clip steps)")

    def add(self, counts: pa.Table) -> None:
        for k in self.n:
            if k in counts.column_names:
                self.n[k] += int(pc.sum(counts[k]).as_py() or 0)
        if time.time() - self.last >= self.every_s:
            self.last = time.time()
            self.show()

    def show(self, what: str = "stream") -> None:
        dt = max(1e-6, time.time() - self.t0)
        log.info("%s: %d clips committed (%.1f/s), %d kept, %d captioned, %d encoded, %.0f s",
                 what, self.n["clips"], self.n["clips"] / dt, self.n["kept"], self.n["captioned"], self.n["encoded"], dt)

    def done(self) -> None:
        self.show("stream done")


def _write_shards(cfg: JobConfig, out: Output, clips: pa.Table) -> tuple[pa.Table, pa.Table]:
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
    written = run_tasks(todo, WriteShards(cfg.shards, out.url), SHARDS)
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
    global _VERBOSE
    _VERBOSE = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="curate: %(message)s", stream=sys.stderr
    )
