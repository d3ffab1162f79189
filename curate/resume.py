"""Shard plans: what the finalize reuses, so an unchanged shard is not written again.

    OUT/work/shards.json   each shard's content plan and row

(Everything else a rerun reuses is in the commit log: curate/commit.py, curate/plan.py.)
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

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


class ShardPlans:
    def __init__(self, out: Output):
        self.out = out
        self.plans: dict[str, dict] = {}
        if out.exists("work/shards.json"):
            with out.fs.open(out.path("work/shards.json"), "r") as f:
                self.plans = json.load(f)

    def reusable(self, shard: str, plan: str) -> dict | None:
        known = self.plans.get(shard)
        if not known or known["plan"] != plan or not self.out.exists(shard):
            return None
        return known["row"] if self.out.fs.size(self.out.path(shard)) == known["row"]["bytes"] else None

    def save(self, plans: dict[str, str], rows: pa.Table) -> None:
        self.plans = {r["shard"]: {"plan": plans[r["shard"]], "row": r} for r in rows.to_pylist()}
        self.out.write_text("work/shards.json", json.dumps(self.plans, indent=1, sort_keys=True))
