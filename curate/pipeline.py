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

from curate.layout import Layout
from curate.commit import run_stamp
from curate.config import JobConfig, to_dict
from curate.dedup import check_against
from curate.finalize import compact, finalize_tables, prune_rows
from curate.inputs import InputError, Listing
from curate.latents import check_latents
from curate.plan import build, clip_steps, committed_sources
from curate.release import write_release
from curate.report import write_report
from curate.samples import generate_samples
from curate.score import check_scorers
from curate.storage import Output
from curate.tiny import use_tiny_models
from schemas import SHARDS, ClipStatus, SourceStatus, conform

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


# ------------------------------------------------------------------------------------------- the job


def read_inputs(cfg: JobConfig, out: Output, rows: int) -> Listing | list[pa.Table]:
    """The job's input rows in tables of at most `rows` (the waves): a `Listing` of input.dir or
    input.manifest, read as the waves are needed, or the generated samples."""
    inp = cfg.input
    if inp.dir or inp.manifest:
        return Listing(inp, rows)
    if not out.is_local:
        raise InputError("input.samples writes sample videos under the output folder, which must be local")
    made = generate_samples(out.path(Layout.SAMPLES), inp.samples)
    keep = ("uri", "license", "title", "author", "source_url", "attribution")
    return waves(pa.Table.from_pylist([{k: r.get(k) for k in keep} for r in made]), rows)


def waves(inputs: pa.Table, rows: int) -> list[pa.Table]:
    return [inputs.slice(i, rows) for i in range(0, inputs.num_rows, rows)]


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
    out.write_text(Layout.JOB, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    wave = cfg.ray.sources_per_wave
    listing = read_inputs(cfg, out, wave) if inputs is None else waves(inputs, wave)
    clock.lap("inputs")

    # ---- the stream: ingest + split per source, then every clip step at once, each committing its results
    init_ray(cfg, address)
    run = run_stamp()
    steps = clip_steps(cfg) if steps is None else steps
    # With motion from codec vectors, the one-pass split measures it from the source's own vectors as it decodes.
    motion = cfg.motion if cfg.motion is not None and cfg.motion.method == "vectors" else None
    progress = Progress([s.name for s in steps])
    # A very large input runs as several executions in turn, one wave of input rows each: the driver holds
    # one wave of the listing (read as it goes) and Ray Data's bookkeeping of one execution.
    for i, rows in enumerate(listing):
        progress.wave(i, rows.num_rows)
        # sources committed before (a rerun, a resume) are found first, and read back in blocks
        cached = committed_sources(cfg, rows, out.url, run)
        plan = build(cfg, rows, out.url, run, motion, steps, source, cached)
        for counts in plan.iter_batches(batch_size=None, batch_format="pyarrow"):
            progress.add(counts)
    skipped = getattr(listing, "others", 0)
    if skipped:
        log.info("%d files under input.dir are not videos (skipped), e.g. %s", skipped, ", ".join(listing.skipped[:3]))
    progress.done()
    clock.lap("stream")

    # ---- finalize, on Ray: dedup groups, then per bucket of sources its tables' parts and its shards
    shards, counts = finalize_tables(cfg, out, run)
    if counts["duplicates"] is not None:
        log.info("dedup: %d duplicates filtered", counts["duplicates"])
    out.write_table("shards", conform(shards, SHARDS))
    log.info("shards: %d (%d unchanged)", shards.num_rows, counts["reused_shards"])
    clock.lap("shards")
    prune_rows(out.url, run)
    compact(out.url, steps)
    clock.lap("tables")
    # ---- release: index.json, LICENSES.md, ATTRIBUTION.csv, the data card, the summary: DuckDB over the tables
    write_release(out, to_dict(cfg))
    summary = summarize(cfg, out, time.time() - t0, skipped)
    log.info("split: %d sources, %d ok; %d scenes, %d clips", summary.sources_ok + summary.sources_error, summary.sources_ok,
             summary.scenes, summary.clips_kept + summary.clips_filtered + summary.clips_error)
    summary.stage_s = clock.stages
    out.write_text(Layout.SUMMARY, json.dumps(dataclasses.asdict(summary), indent=2) + "\n")
    write_report(out.url)
    return summary


class Progress:
    """What a person watching sees: clips committed, kept, captioned, encoded, with a rate; a line every
    few seconds (Ray Data's own per-operator bars show on a terminal with `-v`)."""

    def __init__(self, steps: list[str], every_s: float = 10.0):
        self.sources, self.steps, self.every_s = 0, steps, every_s
        self.t0 = self.last = time.time()
        self.n = {"clips": 0, "kept": 0, "captioned": 0, "encoded": 0}

    def wave(self, i: int, sources: int) -> None:
        """The next execution starts with `sources` more input rows (the listing is read as it goes, so the
        total is known only at the end)."""
        self.sources += sources
        log.info("stream%s: %d sources through split -> %s -> commit", f" (wave {i + 1}, {self.sources} sources so far)" if i else "",
                 sources, " -> ".join(self.steps) or "(no clip steps)")

    def add(self, counts: pa.Table) -> None:
        for k in self.n:
            if k in counts.column_names:
                self.n[k] += int(pc.sum(counts[k]).as_py() or 0)
        if time.time() - self.last >= self.every_s:
            self.last = time.time()
            self.show()

    def show(self, what: str = "stream") -> None:
        dt = max(1e-6, time.time() - self.t0)
        log.info("%s: %d sources, %d clips committed (%.1f/s), %d kept, %d captioned, %d encoded, %.0f s",
                 what, self.sources, self.n["clips"], self.n["clips"] / dt, self.n["kept"], self.n["captioned"], self.n["encoded"], dt)

    def done(self) -> None:
        self.show("stream done")


def summarize(cfg, out: Output, wall_s: float, skipped: int) -> Summary:
    """The run's counts, from the tables (DuckDB aggregates)."""
    from curate.release import connect_tables

    con = connect_tables(out)
    try:
        one = lambda sql: con.execute(sql).fetchone()  # noqa: E731
        ok, err, s_in = one(f"select count(*) filter (where status = '{SourceStatus.OK}'), count(*) filter (where status = '{SourceStatus.ERROR}'), "
                            f"coalesce(sum(duration_s) filter (where status = '{SourceStatus.OK}'), 0) from sources")
        kept, filtered, errors, s_out = one(f"select count(*) filter (where status = '{ClipStatus.KEPT}'), count(*) filter (where status = '{ClipStatus.FILTERED}'), "
                                            f"count(*) filter (where status = '{ClipStatus.ERROR}'), "
                                            f"coalesce(sum(duration_s) filter (where status = '{ClipStatus.KEPT}'), 0) from clips")
        scenes, shards = one("select (select count(*) from scenes), (select count(*) from shards)")
    finally:
        con.close()
    return Summary(output=cfg.output, sources_ok=ok, sources_error=err, scenes=scenes, clips_kept=kept, clips_filtered=filtered,
                   clips_error=errors, hours_in=float(s_in) / 3600, hours_out=float(s_out) / 3600, shards=shards,
                   wall_s=round(wall_s, 2), skipped_files=skipped)


def configure_logging(verbose: bool = False) -> None:
    global _VERBOSE
    _VERBOSE = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="curate: %(message)s", stream=sys.stderr
    )
