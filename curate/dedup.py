"""The dedup step of the plan: signatures of the kept clips (on Ray), near-duplicate groups, and the
signature index every output keeps so later runs can dedup against it (`dedup.against`).

    OUT/commit/signature/<settings>/         clip_id -> signature, committed by the plan, reused by reruns:
                                             made by the one-pass split from its analysis frames (committed
                                             with the split), else by this step from the clip file
    OUT/dedup/signatures.parquet             the output's kept clips (SIGNATURE_INDEX), read by `against`
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.layout import Layout
from curate.config import ConfigError
from curate.storage import Output
from schemas import SIGNATURE_INDEX, ClipStatus
from stages.dedup import EMBEDDING, DedupConfig, Signatures, mark_duplicates, with_embedding

INDEX = Layout.DEDUP_INDEX
SIGNATURE_RULES = 4  # bumped when the signature of the same clip changes (views, hash, frame sampling; 2: reference frames only; 3: + mean colour; 4: the split's analysis frames, + where it came from)


def _read(fs_url: str, rel: str) -> pa.Table:
    out = Output(fs_url)
    with out.fs.open(out.path(rel), "rb") as f:
        return pq.read_table(f)


def check_against(cfg: DedupConfig) -> None:
    """Stop the job at start when an output named in `dedup.against` has no signature index."""
    for url in cfg.against:
        if not Output(url).exists(INDEX):
            raise ConfigError(f"dedup.against: {url} has no {INDEX} (not a curate output, or made before dedup)")


def load_against(cfg: DedupConfig) -> pa.Table:
    tables = [with_embedding(_read(url, INDEX)).select(SIGNATURE_INDEX.names).cast(SIGNATURE_INDEX) for url in cfg.against]
    return pa.concat_tables(tables) if tables else SIGNATURE_INDEX.empty_table()


SIGNATURE = "_signature"  # the signature step's column: in its commit log only, read by the finalize
# ... and where each came from: "split" (the one-pass split's analysis frames), "file" (the clip file decoded again)
SIGNATURE_COLUMNS = (SIGNATURE, "_signature_error", "_signature_from")


class _SignatureStage:
    """Signatures of a block's kept clips as a transient column (the commit log keeps them): the one the
    split made from its analysis frames where the row carries it, else the clip file decoded again."""

    def __init__(self, cfg: DedupConfig):
        self.stage = Signatures(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curate.plan import SPLIT_SIGNATURE

        ids = batch["clip_id"].to_pylist()
        by_id, errors, source = {}, {}, {}
        if SPLIT_SIGNATURE in batch.column_names:
            for i, sig in zip(ids, batch[SPLIT_SIGNATURE].to_pylist()):
                if sig is not None:
                    by_id[i], source[i] = sig, "split"
        rest = batch.filter(pc.invert(pc.is_in(batch["clip_id"], pa.array(list(by_id), pa.string())))) if by_id else batch
        if rest.num_rows:
            sigs = self.stage(rest)
            for i, sig, err in zip(sigs["clip_id"].to_pylist(), sigs["signature"].to_pylist(), sigs["error"].to_pylist()):
                by_id[i], errors[i] = sig, err
                if sig is not None:
                    source[i] = "file"
        batch = batch.append_column(pa.field(SIGNATURE, pa.binary()), pa.array([by_id.get(i) for i in ids], pa.binary()))
        batch = batch.append_column("_signature_error", pa.array([errors.get(i) for i in ids], pa.string()))
        return batch.append_column("_signature_from", pa.array([source.get(i) for i in ids], pa.string()))


def signature_step(cfg: DedupConfig):
    """The plan's signature step: every kept clip's signature, committed (grouping runs in the finalize).
    Clips the one-pass split signed carry their signature here (`with_split_signatures`): nothing is decoded."""
    from curate.plan import Pool, Step, settings_key

    return Step("signature", (Pool(_SignatureStage, (cfg,), batch_size=16),), SIGNATURE_COLUMNS,
                settings_key(cfg.fps, SIGNATURE_RULES), keep=lambda r: r.get(SIGNATURE) is not None)


def with_split_signatures(clips: pa.Table, split: pa.Table, key: str) -> pa.Table:
    """Clip rows + the transient column of the signatures the split made with settings `key` (from its SPLIT rows)."""
    from curate.plan import SPLIT_SIGNATURE

    by_id = {}
    for cs in split["clips"].to_pylist():
        for c in cs or []:
            if c.get("signature") is not None and c.get("signature_key") == key:
                by_id[c["clip_id"]] = c["signature"]
    return clips.append_column(pa.field(SPLIT_SIGNATURE, pa.binary()), pa.array([by_id.get(i) for i in clips["clip_id"].to_pylist()], pa.binary()))


def mark_step(cfg: DedupConfig, clips: pa.Table, sigs: pa.Table) -> pa.Table:
    """The finalize's dedup: clips with dup_group / duplicate_of, duplicates of a better clip filtered."""
    return mark_duplicates(clips, sigs, load_against(cfg), cfg)


def write_index(out: Output, clips: pa.Table, sigs: pa.Table) -> int:
    """OUT/dedup/signatures.parquet: signatures of the output's kept clips (what `against` reads). Returns rows."""
    kept = clips.filter(pc.equal(clips["status"], ClipStatus.KEPT)).select(["clip_id", "source_id", "duration_s", "aesthetic_score"])
    index = kept.join(with_embedding(sigs).select(["clip_id", "signature", EMBEDDING]), "clip_id", join_type="inner")
    index = index.filter(pc.is_valid(index["signature"])).sort_by("clip_id")
    buf = io.BytesIO()
    pq.write_table(index.select(SIGNATURE_INDEX.names).cast(SIGNATURE_INDEX), buf, compression="zstd")
    out.write_bytes(INDEX, buf.getvalue())
    return index.num_rows


def drop_from_index(out: Output, source_ids: set[str]) -> None:
    """Remove the clips of `source_ids` from the output's signature index (a takedown)."""
    if not out.exists(INDEX):
        return
    index = _read(out.url, INDEX)
    keep = index.filter(pc.invert(pc.is_in(index["source_id"], pa.array(sorted(source_ids), pa.string()))))
    if keep.num_rows != index.num_rows:
        buf = io.BytesIO()
        pq.write_table(keep, buf, compression="zstd")
        out.write_bytes(INDEX, buf.getvalue())
