"""The streaming plan: one lazy Ray Data chain from the input listing to the commit log.

    input rows ──► ingest + split     one task per source: stat, hash + probe, split (one decode), clip files;
                                      a source committed before with the same settings is read back instead
               ──► commit split       blocks of sources: their split committed, flattened to clip rows,
                                      the licence policy applied (nothing is spent on a clip that cannot ship)
               ──► the clip steps     `clip_steps(cfg)`: scorers, select, signatures, caption, select, latents;
                                      each looks up what is committed under its settings, computes the rest,
                                      commits it
               ──► commit rows        each block's final clip rows (what the finalize reads)

Every operator runs at once (Ray Data streams blocks between them; order is not kept: the finalize makes
the output deterministic). The driver holds no rows: it iterates one small count row per block to show
progress. CPU steps are tasks; model steps are actor pools (`ActorPoolStrategy(min, max)`), asking for a
share of a GPU only when the cluster has GPUs, and for a share of a CPU small enough that every pool and
at least one task fit on the smallest cluster (one CPU).

A step is one entry of `clip_steps`: the stage (a class from `stages/` or a thin actor around one), its
constructor arguments, the columns it decides, its settings key (None: cheap, computed every run, not
committed), and how rows are matched and which rows it applies to. `StepRunner` runs any of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from curate.commit import CommitLog, run_stamp
from curate.config import JobConfig, to_dict
from curate.layout import Layout
from schemas import CLIPS, LATENT_FIELDS, SOURCES, TEXT_EMBEDDING_FIELDS, ClipStatus, Reason, SourceStatus, conform
from stages.ingest import INPUT_COLUMNS, ingest_one, normalize_license
from stages.split import SPLIT, Split, flatten

log = logging.getLogger("curate")

TODO = "_todo"  # transient: the rows of a block a multi-pool step still has to compute
SPLIT_SIGNATURE = "_split_signature"  # transient: a clip's dedup signature the one-pass split made (for the signature step)
CARRY = (SPLIT_SIGNATURE,)  # transient columns that ride through every step to the one that uses them (the sink drops them)
HIT = "_hit"  # transient: the committed row's match differs only in what `revisit` redoes
SOURCE_ROWS, CLIP_ROWS = Layout.SOURCE_ROWS, Layout.CLIP_ROWS

# Bumped when the split code cuts other windows from the same settings (2: `one_pass: false` cuts the
# one-pass windows; 3: frame times from the repaired timeline, discontinuities start scenes, edit lists
# are not truncation).
SPLIT_RULES = 3
# Errors that may pass (a network hiccup, a file still being copied): never committed.
TRANSIENT = {Reason.MISSING, Reason.UNREADABLE}


def settings_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stat_key(uri: str) -> str | None:
    """uri|size|mtime of an input, or None when it cannot be stat'ed (then it is always read)."""
    try:
        fs, p = fsspec.core.url_to_fs(uri)
        info = fs.info(p)
    except (OSError, ValueError):
        return None
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("created")
    if info.get("type") == "directory" or mtime is None:
        return None
    return f"{uri}|{info.get('size')}|{mtime}"


# ------------------------------------------------------------------------------------------ steps


@dataclass(frozen=True)
class Pool:
    """One Ray Data operator of a step: `stage(*args)` built once per worker, called per block."""

    stage: Any
    args: tuple = ()
    actors: tuple[int, int] | None = None  # None: tasks; else an actor pool of (min, max) actors
    gpu: bool = False  # asks for a share of a GPU when the cluster has GPUs
    batch_size: int | None = None  # rows per call (None: the block as it comes)
    num_cpus: float | None = None  # None: 1 per task, a share per actor (see `resources`)


@dataclass(frozen=True)
class Step:
    name: str
    pools: tuple[Pool, ...]
    columns: tuple[str, ...] = ()  # what the step decides about a row (committed with it)
    key: str | None = None  # settings key; None: not committed, computed every run
    applies: Callable[[dict], bool] | None = None  # the rows it works on (default: kept clips with a file)
    match: Callable[[dict], Any] | None = None  # what else a committed row must agree on (default: nothing)
    revisit: Callable[[dict, dict], dict | None] | None = None  # (row, committed) -> columns to redo it with
    valid: Callable[[dict], bool] | None = None  # is a committed row still good (its files there)?
    keep: Callable[[dict], bool] | None = None  # which computed rows are committed (default: all)
    stamp: Callable[[dict], dict] | None = None  # more (string) columns to commit with a row, seen by `revisit`


def kept_with_file(row: dict) -> bool:
    return row.get("status") == ClipStatus.KEPT and bool(row.get("clip_uri"))


LOOKUP = -1  # the StepRunner index of a step's lookup run as a task of its own (see `looks_up_apart`)


def looks_up_apart(step: Step) -> bool:
    """A committed step whose first pool is an actor pool (a model) looks its committed rows up in a CPU
    task of its own, on whole blocks: its actors (a GPU) see only the rows they have to compute, in
    batches of their own size, and a rerun with everything committed costs them next to nothing."""
    return step.key is not None and step.pools[0].actors is not None


class StepRunner:
    """Runs one pool of a step over a block. The first pool (or the step's lookup, index LOOKUP) looks
    committed results up (filling them in) and marks the rest TODO; every pool computes only TODO rows;
    the last commits them and drops TODO."""

    def __init__(self, step: Step, index: int, out_url: str, run: int):
        self.step, self.index, self.run = step, index, run
        self.pool, self._stage = (None if index == LOOKUP else step.pools[index]), None
        self.first = index == LOOKUP or (index == 0 and not looks_up_apart(step))
        self.last = index == len(step.pools) - 1
        self.log = CommitLog(out_url, step.name, step.key) if step.key else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        carry = [c for c in CARRY if c in batch.column_names]
        carried = batch.select(["clip_id", *carry]) if carry else None
        if self.first:
            batch = self.lookup(batch)
            if carried is not None:
                batch = _reattach(batch, carried)
            if self.index == LOOKUP:
                return batch
        todo = batch[TODO].to_pylist()
        if any(todo):
            mask = pa.array(todo, pa.bool_())
            rest, work = batch.filter(pc.invert(mask)), batch.filter(mask)
            done = self.stage()(work)
            if TODO not in done.column_names:  # a stage that rebuilt its table: its rows are still to do for the next pool
                done = done.append_column(TODO, pa.array([True] * done.num_rows, pa.bool_()))
            if self.last and self.log is not None:
                self.commit(done)
            batch = pa.concat_tables([rest, _like(done, rest)], promote_options="default") if rest.num_rows else done
        if self.last:
            batch = conform(batch, CLIPS)
        return _reattach(batch, carried) if carried is not None else batch

    def stage(self):
        """The stage, built on first use: a rerun with everything committed loads no model."""
        if self._stage is None:
            self._stage = self.pool.stage(*self.pool.args)
        return self._stage

    def lookup(self, batch: pa.Table) -> pa.Table:
        step = self.step
        applies = step.applies or kept_with_file
        rows = conform(batch, CLIPS).to_pylist()
        todo = [applies(r) for r in rows]
        extra: list[dict] = [{} for _ in rows]
        if self.log is not None and any(todo):
            index = self.log.locate([r["clip_id"] for i, r in enumerate(rows) if todo[i]])
            wanted = {}
            for i, r in enumerate(rows):
                if todo[i]:
                    key = (r["clip_id"], _match(step, r))
                    if key in index:
                        wanted[key] = index[key]
            committed = self.log.rows(wanted) if wanted else {}
            for i, r in enumerate(rows):
                c = committed.get(r["clip_id"]) if todo[i] else None
                if c is None or (step.valid is not None and not step.valid(c)):
                    continue
                r.update({k: c.get(k) for k in step.columns})
                redo = step.revisit(r, c) if step.revisit is not None else None
                if redo is None:
                    todo[i] = False
                else:
                    extra[i] = redo
        table = pa.Table.from_pylist(rows, schema=CLIPS)
        for name in sorted({k for e in extra for k in e}):
            table = table.append_column(name, pa.array([e.get(name) for e in extra]))
        return table.append_column(TODO, pa.array(todo, pa.bool_()))

    def commit(self, done: pa.Table) -> None:
        step = self.step
        rows = [r for r in done.to_pylist() if step.keep is None or step.keep(r)]
        if not rows:
            return
        data = {"id": [r["clip_id"] for r in rows], "match": [_match(step, r) for r in rows]}
        for c in step.columns:
            data[c] = [r.get(c) for r in rows]
        # a step's own columns (a signature) are not clip columns: they live in the log only
        fields = [pa.field("id", pa.string()), pa.field("match", pa.string())]
        fields += [CLIPS.field(c) if c in CLIPS.names else done.schema.field(c) for c in step.columns]
        if step.stamp is not None:
            stamps = [step.stamp(r) for r in rows]
            for k in sorted({k for st in stamps for k in st}):
                data[k] = [st.get(k) for st in stamps]
                fields.append(pa.field(k, pa.string()))
        self.log.write(pa.Table.from_pydict(data, schema=pa.schema(fields)), run=self.run)


def step_runners(step: Step, out_url: str, run: int) -> list[StepRunner]:
    """A step's runners in the order the plan chains them (its lookup first when apart): for running a
    step in-process, block by block through each in turn."""
    return [StepRunner(step, i, out_url, run) for i in ([LOOKUP] if looks_up_apart(step) else []) + list(range(len(step.pools)))]


def _reattach(table: pa.Table, carried: pa.Table) -> pa.Table:
    """`table` with the CARRY columns of `carried` (clip_id + those) put back by clip_id: a stage may
    have dropped, reordered or rebuilt its rows."""
    ids = table["clip_id"].to_pylist()
    for c in carried.column_names[1:]:
        if c in table.column_names:
            table = table.drop_columns([c])
        by_id = dict(zip(carried["clip_id"].to_pylist(), carried[c].to_pylist()))
        field = carried.schema.field(c)
        table = table.append_column(field, pa.array([by_id.get(i) for i in ids], field.type))
    return table


def _match(step: Step, row: dict) -> str | None:
    m = step.match(row) if step.match is not None else None
    return None if m is None else json.dumps(m, default=str)


def _like(table: pa.Table, other: pa.Table) -> pa.Table:
    """`table` with `other`'s transient columns it lacks (nulls), so the two concatenate."""
    for f in other.schema:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table


class _Select:
    """The job's predicate (or part of it) as a stage."""

    def __init__(self, where: str):
        self.where = where

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curate.select import apply_select

        return apply_select(batch, self.where)


def clip_steps(cfg: JobConfig) -> list[Step]:
    """The steps every clip row goes through, in order. Adding a stage is adding an entry here."""
    from curate.captioning import caption_step
    from curate.latents import latents_pool, latents_valid, settings_key as latents_key
    from curate.score import score_pools
    from curate.select import split_where
    from curate.dedup import signature_step
    from curate.storage import Output

    steps: list[Step] = []
    for name, pool, columns, key in score_pools(cfg):
        steps.append(Step(name, (pool,), tuple(columns) + ("status", "reason", "error"), key))
    before, after = split_where(cfg.select.where)
    if before:
        steps.append(Step("select", (Pool(_Select, (before,), num_cpus=LIGHT_CPUS),), applies=lambda r: r.get("status") == ClipStatus.KEPT))
    if cfg.dedup is not None:
        steps.append(signature_step(cfg.dedup))
    if cfg.caption is not None:
        steps.append(caption_step(cfg.caption))
        if after:
            steps.append(Step("select_caption", (Pool(_Select, (after,), num_cpus=LIGHT_CPUS),), applies=lambda r: r.get("status") == ClipStatus.KEPT))
    if cfg.latents is not None:
        decided = ("status", "reason", "error", *(f.name for f in LATENT_FIELDS), *(f.name for f in TEXT_EMBEDDING_FIELDS))
        text = cfg.latents.text is not None
        steps.append(Step("latents", (latents_pool(cfg.latents, Output(cfg.output).uri(Layout.LATENTS)),), decided, latents_key(cfg.latents),
                          applies=lambda r: r.get("status") == ClipStatus.KEPT,
                          match=(lambda r: [r.get("clip_bytes"), r.get("caption")]) if text else (lambda r: r.get("clip_bytes")),
                          valid=latents_valid, keep=lambda r: bool(r.get("latent_uri")) or r.get("reason") == Reason.NO_BUCKET))
    return steps


# ------------------------------------------------------------------------------------------ ingest + split


class IngestSplit:
    """Input rows -> SPLIT rows (+ `id`, the input's stat key, and TODO: whether to commit it). A source
    committed before with the same settings, unchanged on disk, with every clip file still there, is read
    back from the log (what the input row says about it, licence and credits, taken from the input)."""

    def __init__(self, split_cfg, out_url: str, motion=None, signature: tuple[float, str] | None = None):
        from curate.storage import Output

        out = Output(out_url)
        self.split = Split(split_cfg, out.uri(Layout.CLIPS), motion=motion, signature=signature)
        self.log = CommitLog(out_url, "split", split_key(split_cfg))
        self.fs = out.fs  # the clip files' filesystem (fsspec methods take a full URL)

    def __call__(self, batch: pa.Table) -> pa.Table:
        inputs = batch.to_pylist()
        keys = [stat_key(row["uri"]) if row.get("uri") else None for row in inputs]
        committed = self.committed(keys)
        rows, ids, fresh = [], [], []
        for row, key in zip(inputs, keys):
            cached = committed.get(key) if key is not None else None
            if cached is not None:
                cached = {**cached, **{c: row.get(c) for c in INPUT_COLUMNS}}
                cached["license_raw"], cached["license"] = row.get("license"), normalize_license(row.get("license"))
                rows.append(cached)
                fresh.append(False)
            else:
                result = self.split_source(row)
                failed_clip = any(c["status"] == ClipStatus.ERROR for c in result["clips"] or [])
                rows.append(result)
                fresh.append(bool(key) and result["reason"] not in TRANSIENT and not failed_clip)
            ids.append(key or row.get("uri") or "")
        table = pa.Table.from_pylist(rows, schema=SPLIT)
        return table.append_column("id", pa.array(ids, pa.string())).append_column(TODO, pa.array(fresh, pa.bool_()))

    def split_source(self, row: dict) -> dict:
        """One input row ingested (hash, probe) and split: its SPLIT row."""
        source = ingest_one(row)
        return self.split.split_one(source) if source["status"] == SourceStatus.OK else {**source, "scenes": [], "clips": []}

    def committed(self, keys: list[str | None]) -> dict[str, dict]:
        """{stat key: committed SPLIT row} of the sources among `keys` committed with these settings whose
        clip files are all still there (one lookup in the log for the whole block)."""
        found = self.log.locate([k for k in keys if k is not None])
        rows = self.log.rows(found) if found else {}
        out = {}
        for key, row in rows.items():
            row.pop("id", None), row.pop("match", None)
            if all(not c.get("clip_uri") or self.fs.exists(c["clip_uri"]) for c in row.get("clips") or []):
                out[key] = row  # else a clip file went missing: split again
        return out


class SplitLookup:
    """Input rows -> `cached`: whether each source's split is committed under these settings for its
    current stat key (the per-wave look ahead that lets committed sources travel in blocks)."""

    def __init__(self, split_cfg, out_url: str):
        self.log = CommitLog(out_url, "split", split_key(split_cfg))

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys = [stat_key(u) if u else None for u in batch["uri"].to_pylist()]
        found = {i for i, _ in self.log.locate([k for k in keys if k is not None])}
        return pa.table({"cached": pa.array([k is not None and k in found for k in keys], pa.bool_())})


class CommitSplit:
    """Blocks of SPLIT rows: the fresh ones committed (one part per block), every source row recorded for
    this run, then flattened into clip rows with their source's licence, credits and sha256, and the
    licence policy (allowed licences, opt-outs, takedowns) applied."""

    def __init__(self, split_cfg, out_url: str, motion_key: str | None, policy_cfg, run: int, signature_key: str | None = None):
        from curate.release import blocked_sources, read_takedowns
        from curate.storage import Output
        from stages.policy import LicencePolicy

        self.split_log = CommitLog(out_url, "split", split_key(split_cfg))
        self.signature_key = signature_key  # the signature step's settings: the split's signatures made with them ride along
        self.sources_log = CommitLog(out_url, *SOURCE_ROWS)
        self.motion_key, self.run = motion_key, run
        self.policy_cfg, self.takedowns = policy_cfg, read_takedowns(Output(out_url))
        self._blocked, self._policy = blocked_sources, LicencePolicy

    def __call__(self, batch: pa.Table) -> pa.Table:
        fresh = batch.filter(batch[TODO])
        if fresh.num_rows:
            self.split_log.write(fresh.drop_columns([TODO]), run=self.run)
        split = batch.drop_columns(["id", TODO])
        seen = split.drop_columns(["clips"]).append_column("id", batch["id"])
        self.sources_log.write(seen, run=self.run)
        sources, _scenes, windows = flatten(split, self.motion_key)
        clips = clip_rows(windows, sources)
        policy = self._policy(self.policy_cfg, self._blocked(self.policy_cfg, conform(sources, SOURCES), self.takedowns))
        clips = policy(clips)
        if self.signature_key:
            from curate.dedup import with_split_signatures

            clips = with_split_signatures(clips, split, self.signature_key)
        return clips


def clip_rows(windows: pa.Table, sources: pa.Table) -> pa.Table:
    """Clip windows joined with what they inherit from their source (licence, credits, uri, sha256)."""
    if windows.num_rows == 0:
        return CLIPS.empty_table()
    inherit = sources.select(["source_id", "license", "title", "author", "source_url", "attribution", "uri", "sha256"])
    inherit = inherit.rename_columns(["source_id", "license", "title", "author", "source_url", "attribution", "source_uri", "source_sha256"])
    # one row per source_id (the same content under two names splits to the same clips)
    first = {}
    for i, s in enumerate(inherit["source_id"].to_pylist()):
        first.setdefault(s, i)
    inherit = inherit.take(sorted(first.values()))
    return conform(windows.join(inherit, "source_id", join_type="left outer"), CLIPS)


def split_key(cfg) -> str:
    return settings_key(to_dict(cfg), SPLIT_RULES)


class CommitRows:
    """The sink: each block's final clip rows committed for this run; returns one count row."""

    def __init__(self, out_url: str, run: int):
        self.log, self.run = CommitLog(out_url, *CLIP_ROWS), run

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = conform(batch, CLIPS)
        if batch.num_rows:
            self.log.write(batch.append_column("id", batch["clip_id"]), run=self.run)
        status = batch["status"].to_pylist()
        captioned = batch["caption"].is_valid() if batch.num_rows else pa.array([], pa.bool_())
        return pa.table({
            "clips": [batch.num_rows], "kept": [status.count(ClipStatus.KEPT)],
            "captioned": [int(pc.sum(captioned).as_py() or 0)], "encoded": [int(pc.sum(batch["latent_uri"].is_valid()).as_py() or 0)],
        })


# ------------------------------------------------------------------------------------------ the chain

_WORKERS: dict = {}  # per worker process: the stage objects tasks built (models, indexes load once)


def _for_run(run: int) -> dict:
    """This worker's cache for `run`: a new run in a long-lived worker reuses nothing of the last one."""
    if _WORKERS.get("run") != run:
        _WORKERS.clear()
        _WORKERS["run"] = run
    return _WORKERS


def _task(batch: pa.Table, cls, args: tuple, name: str, run: int) -> pa.Table:
    """A CPU step as a Ray task: its object is built once per worker process and run, and kept."""
    _for_run(run)
    if name not in _WORKERS:
        _WORKERS[name] = cls(*args)
    return _WORKERS[name](batch)


LIGHT_CPUS = 0.05  # what a bookkeeping step (commit, select) asks for


@dataclass
class Resources:
    """How the plan shares the cluster's logical CPUs so that every operator can run at once (a task
    that cannot fit waits for the split to finish everywhere, and the stream becomes a sequence of
    barriers again): the split takes all CPUs but a quarter (all but one below four; half of a single
    CPU), actor pools a quarter of the CPUs between them (on the CPU; a GPU share only on GPUs),
    bookkeeping LIGHT_CPUS each, and the CPU steps' tasks share what is left (at least LIGHT_CPUS each:
    on a small machine they are let in beside the split rather than after it). The split and the actor
    pools always fit together, so no pool's actors can keep the split from starting."""

    cpus: float  # of the smallest node: every share must fit on any one node
    gpus: float
    actor_pools: int
    gpu_pools: int
    cpu_steps: int = 1
    light_steps: int = 3
    total_cpus: float | None = None  # of the cluster (default: cpus)

    @property
    def splitters(self) -> int:
        """How many split tasks run at once, over the whole cluster."""
        total = self.total_cpus or self.cpus
        return max(1, int(total * 0.75) if total >= 4 else int(total) - 1)

    @property
    def actor_share(self) -> float:
        return min(1.0, self.cpus / (4 * max(1, self.actor_pools)))

    @property
    def split_cpus(self) -> float:
        return 1.0 if self.cpus >= 2 else self.cpus / 2

    def task_cpus(self, pool: Pool | None = None) -> float:
        """CPUs per task of a CPU step (`pool`), or of the split (None)."""
        if pool is None:
            return self.split_cpus
        if pool.num_cpus is not None and pool.num_cpus <= LIGHT_CPUS:
            return pool.num_cpus
        cpu_actors = self.actor_pools - (self.gpu_pools if self.gpus > 0 else 0)
        free = self.cpus - self.split_cpus - cpu_actors * self.actor_share - self.light_steps * LIGHT_CPUS
        share = free / max(1, self.cpu_steps)
        want = pool.num_cpus if pool.num_cpus is not None else 1.0
        return round(max(LIGHT_CPUS, min(want, share)), 3)

    def ray_args(self, pool: Pool) -> dict:
        """What one actor of `pool` asks Ray for: a GPU share on GPUs, else a share of the CPUs."""
        if pool.gpu and self.gpus > 0:
            # num_cpus=0: without it Ray Data reserves a whole CPU per GPU actor (three GPU pools would ask
            # for three CPUs of two and wait forever); with a CPU share it warns the pair is experimental.
            return {"num_gpus": round(min(1.0, self.gpus / max(1, self.gpu_pools)), 4), "num_cpus": 0}
        return {"num_cpus": round(min(pool.num_cpus or 1, self.actor_share), 4)}

    def actors(self, pool: Pool) -> tuple[int, int]:
        lo, hi = pool.actors
        if pool.gpu:  # on GPUs as many as the share allows; on the CPU one copy of the model
            hi = min(hi, max(1, int(self.gpus // max(1, self.gpu_pools)))) if self.gpus > 0 else lo
        return lo, max(lo, hi)


def resources_for(steps: list[Step]) -> Resources:
    import ray

    cluster = ray.cluster_resources()
    pools = [p for s in steps for p in s.pools]
    # Shares are planned for the smallest node (a head and a worker of one CPU each must each fit a
    # split task beside their share of the actors), the number of split tasks for the whole cluster.
    per_node = [n["Resources"]["CPU"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    node_cpus = float(min(per_node)) if per_node else float(cluster.get("CPU", 1))
    return Resources(node_cpus, float(cluster.get("GPU", 0)),
                     sum(p.actors is not None for p in pools), sum(p.gpu and p.actors is not None for p in pools),
                     cpu_steps=sum(p.actors is None and (p.num_cpus is None or p.num_cpus > LIGHT_CPUS) for p in pools),
                     light_steps=2 + sum(p.actors is None and p.num_cpus is not None and p.num_cpus <= LIGHT_CPUS for p in pools)
                     + sum(looks_up_apart(s) for s in steps),
                     total_cpus=float(cluster.get("CPU", 1)))


def _ingest(batch: pa.Table, rows, cls, args: tuple, name: str, run: int, keep_id: bool = False) -> pa.Table:
    """The per-source task: input row positions -> those input rows (the table fetched once per worker
    process and wave) -> the source step (`cls`: IngestSplit unless replaced); with `keep_id`, the
    positions are put back beside its output."""
    import ray

    cache = _for_run(run)
    if cache.get("inputs_ref") != rows:
        cache["inputs_ref"], cache["inputs"] = rows, ray.get(rows)
    out = _task(cache["inputs"].take(batch["id"]), cls, args, name, run)
    return out.append_column("id", batch["id"]) if keep_id else out


class _Blocks:
    """A datasource of input row positions 0..n-1 in blocks of the given sizes, one read task each (made
    lazily: `ray.data.Datasource` is imported with Ray)."""

    def __new__(cls, sizes: list[int]):
        from ray.data import Datasource, ReadTask
        from ray.data.block import BlockMetadata

        class Blocks(Datasource):
            def estimate_inmemory_data_size(self):
                return 8 * sum(sizes)

            def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
                tasks, start = [], 0
                for n in sizes:
                    meta = BlockMetadata(num_rows=n, size_bytes=8 * n, input_files=None, exec_stats=None)
                    tasks.append(ReadTask(lambda s=start, n=n: [pa.table({"id": pa.array(range(s, s + n), pa.int64())})], meta))
                    start += n
                return tasks

        return Blocks()


READ_BACK = 64  # committed sources read back per task (a fresh source is a task of its own)
LOOK_AHEAD = 256  # sources per task of the per-wave look ahead


def committed_sources(cfg: JobConfig, inputs: pa.Table, out_url: str, run: int) -> pa.Array | None:
    """Which input rows (a bool per row) have their split committed under this job's split settings,
    looked up on Ray in blocks of LOOK_AHEAD sources before the wave's plan is built; None when the split
    log has nothing (a first run: nothing to look up). The driver holds one bool per source of a wave."""
    import ray
    from ray.data import TaskPoolStrategy

    if not CommitLog(out_url, "split", split_key(cfg.split)).parts() or inputs.num_rows == 0:
        return None
    res = resources_for([])
    n = inputs.num_rows
    sizes = [min(LOOK_AHEAD, n - i) for i in range(0, n, LOOK_AHEAD)]
    rows = ray.put(inputs.select(["uri"]))
    ds = ray.data.read_datasource(_Blocks(sizes), num_cpus=LIGHT_CPUS, concurrency=res.splitters)
    ds = ds.map_batches(_ingest, fn_args=(rows, SplitLookup, (cfg.split, out_url), "lookup", run), fn_kwargs={"keep_id": True},
                        batch_size=None, num_cpus=res.task_cpus(), compute=TaskPoolStrategy(size=res.splitters), batch_format="pyarrow")
    cached = [False] * n
    for t in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for i, c in zip(t["id"].to_pylist(), t["cached"].to_pylist()):
            cached[i] = c
    return pa.array(cached, pa.bool_())


def build(cfg: JobConfig, inputs: pa.Table, out_url: str, run: int, motion=None, steps: list[Step] | None = None, source=None,
          cached: pa.Array | None = None):
    """The lazy dataset of the whole plan (nothing runs until it is iterated). `source` (a class and its
    arguments) replaces IngestSplit as the per-source task (the scale benchmark's synthetic sources).
    `cached` (a bool per input row, `committed_sources`): those sources are read back from the split log
    READ_BACK to a task, ahead of the fresh ones, which are a task each."""
    import ray
    from ray.data import TaskPoolStrategy

    from stages.motion import settings_key as motion_settings_key

    steps = clip_steps(cfg) if steps is None else steps
    res = resources_for(steps)
    fmt = {"batch_format": "pyarrow"}
    # A fresh source is one task (the split is the plan's heaviest work: one source per task spreads it
    # over every CPU); committed ones come first, in blocks, so a rerun pays a task per READ_BACK
    # sources, not per source. The input rows go to the object store once and each task takes its rows
    # by position (one driver-made block per source cost the driver ~25 KB each, for the whole run); the
    # read has a bookkeeping share of a CPU, a few tasks at a time (a read task asking for a whole CPU
    # would never start beside the actors on a one-CPU node, and many tiny tasks at a share of a CPU each
    # start as many worker processes).
    sizes = [1] * inputs.num_rows
    if cached is not None and pc.any(cached).as_py():
        hits = pc.indices_nonzero(cached)
        inputs = inputs.take(pa.concat_arrays([hits, pc.indices_nonzero(pc.invert(cached))]))
        sizes = [min(READ_BACK, len(hits) - i) for i in range(0, len(hits), READ_BACK)] + [1] * (inputs.num_rows - len(hits))
    rows = ray.put(inputs)
    ds = ray.data.read_datasource(_Blocks(sizes), num_cpus=LIGHT_CPUS, concurrency=res.splitters)
    # the dedup signature step's settings, when it is one of the steps: the one-pass split signs clips as it decodes
    sig_step = next((s for s in steps if s.name == "signature"), None)
    signature = (cfg.dedup.fps, sig_step.key) if sig_step is not None and cfg.dedup is not None else None
    source = source or (IngestSplit, (cfg.split, out_url, motion, signature))
    # The split runs on all CPUs but a quarter (one of two): the steps after it run as it goes, instead of
    # waiting behind a queue of sources that would always win the free CPU (see Resources).
    ds = ds.map_batches(_ingest, fn_args=(rows, *source, "ingest", run), batch_size=None, num_cpus=res.task_cpus(),
                        compute=TaskPoolStrategy(size=res.splitters), **fmt)
    motion_key = motion_settings_key(motion) if motion else None
    commit_args = (cfg.split, out_url, motion_key, cfg.policy, run, signature[1] if signature else None)
    ds = ds.map_batches(_task, fn_args=(CommitSplit, commit_args, "commit_split", run),
                        batch_size=cfg.ray.sources_per_block, num_cpus=LIGHT_CPUS, **fmt)
    ds = add_steps(ds, steps, res, out_url, run)
    return ds.map_batches(_task, fn_args=(CommitRows, (out_url, run), "rows", run), batch_size=None, num_cpus=LIGHT_CPUS, **fmt)


def add_steps(ds, steps: list[Step], res: Resources, out_url: str, run: int):
    """`ds` through every pool of every step: CPU pools as tasks, model pools as actor pools."""
    from ray.data import ActorPoolStrategy

    fmt = {"batch_format": "pyarrow"}
    for step in steps:
        if looks_up_apart(step):
            ds = ds.map_batches(_task, fn_args=(StepRunner, (step, LOOKUP, out_url, run), f"{step.name}/lookup", run), batch_size=None,
                                num_cpus=LIGHT_CPUS, **fmt)
        for i, pool in enumerate(step.pools):
            args = (step, i, out_url, run)
            if pool.actors is None:
                ds = ds.map_batches(_task, fn_args=(StepRunner, args, f"{step.name}/{i}", run), batch_size=pool.batch_size,
                                    num_cpus=res.task_cpus(pool), **fmt)
            else:
                lo, hi = res.actors(pool)
                asks = res.ray_args(pool)
                log.debug("plan: %s pool %d/%d (%s): %d-%d actors, %s each", step.name, i + 1, len(step.pools), getattr(pool.stage, "__name__", pool.stage),
                          lo, hi, " + ".join(f"{v:g} {k[4:-1].upper()}" for k, v in sorted(asks.items(), reverse=True)))
                ds = ds.map_batches(StepRunner, fn_constructor_args=args, batch_size=pool.batch_size,
                                    compute=ActorPoolStrategy(min_size=lo, max_size=hi), **asks, **fmt)
    return ds


def run_steps(clips: pa.Table, steps: list[Step], out_url: str, blocks: int = 4) -> pa.Table:
    """Clip rows through `steps` on Ray (committing to OUT's log like the plan) and back: for tools and
    tests on small tables; the job itself never collects rows on the driver."""
    import ray

    n = max(1, -(-clips.num_rows // blocks))
    ds = ray.data.from_arrow([clips.slice(i, n) for i in range(0, clips.num_rows, n)] or [clips])
    ds = add_steps(ds, steps, resources_for(steps), out_url, run_stamp())
    parts = [t for t in ds.iter_batches(batch_size=None, batch_format="pyarrow") if t.num_rows]
    return pa.concat_tables(parts) if parts else CLIPS.empty_table()
