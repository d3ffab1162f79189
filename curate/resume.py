"""Shard plans: what the finalize reuses, so an unchanged shard is not written again.

    OUT/work/shards/bucket=NNNNN.json   each shard's content plan and row, per bucket of sources
    OUT/work/shards.json                the same for an output without buckets (shards.buckets: null)

(Everything else a rerun reuses is in the commit log: curate/commit.py, curate/plan.py.)
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from curate.layout import Layout
from curate.storage import Output
from stages.shards import clip_metadata, encode_json

def shard_plan(rows: pa.Table) -> str:
    """A hash of everything that goes into a shard's tar: keys, clip sizes, metadata, captions."""
    h = hashlib.sha256()
    for row in rows.to_pylist():
        h.update(row["clip_id"].encode())
        h.update(str(row["clip_bytes"]).encode())
        h.update(encode_json(clip_metadata(row)))
        h.update((row.get("caption") or "").encode())
    return h.hexdigest()


plans_file = Layout.shard_plans


class ShardPlans:
    """The plans of one bucket's shards (all shards' without buckets)."""

    def __init__(self, out: Output, bucket: int | None = None):
        self.out, self.rel = out, plans_file(bucket)
        self.plans: dict[str, dict] = {}
        if out.exists(self.rel):
            with out.fs.open(out.path(self.rel), "r") as f:
                self.plans = json.load(f)

    def reusable(self, shard: str, plan: str) -> dict | None:
        known = self.plans.get(shard)
        if not known or known["plan"] != plan or not self.out.exists(shard):
            return None
        return known["row"] if self.out.fs.size(self.out.path(shard)) == known["row"]["bytes"] else None

    def save(self, plans: dict[str, str], rows: pa.Table) -> None:
        self.plans = {r["shard"]: {"plan": plans[r["shard"]], "row": r} for r in rows.to_pylist()}
        self.out.write_text(self.rel, json.dumps(self.plans, indent=1, sort_keys=True))
