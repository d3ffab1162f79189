"""Dedup across runs: a re-upload of one of the demo's videos (half the resolution, re-encoded) run as a new
job with `dedup.against` the demo's output: its copy of the demo's kept clip is filtered as a duplicate of it."""

import json

import pyarrow.parquet as pq
import pytest

from curate.bench.dedup import edit
from curate.catalog import query
from curate.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.ray


def q(out, sql):
    return json.loads(query(str(out), sql, "json"))


def test_a_new_run_drops_clips_an_earlier_output_has(demo_out, tmp_path):
    kept = q(demo_out, "select c.clip_id, c.start_s, c.end_s, s.uri from clips c join sources s using (source_id) where c.status = 'kept'")
    assert kept and (demo_out / "dedup" / "signatures.parquet").exists()
    # the one-pass split signed every clip as it decoded its source: the signature step decoded no clip file
    log = pq.ParquetDataset(sorted(str(p) for p in (demo_out / "commit" / "signature").glob("*/part-*.parquet"))).read()
    assert set(log["_signature_from"].to_pylist()) == {"split"} and {r["clip_id"] for r in kept} <= set(log["id"].to_pylist())
    assert pq.read_table(demo_out / "dedup" / "signatures.parquet")["clip_id"].to_pylist() == sorted(r["clip_id"] for r in kept)
    first = kept[0]
    inp = tmp_path / "in"
    inp.mkdir()
    edit(first["uri"], "half_resolution", str(inp / "reupload.mp4"))
    out = tmp_path / "out"
    assert main(["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"output={out}", "--set", f"input.dir={inp}",
                 "--set", "input.license=CC0-1.0", "--set", f"dedup.against=[{demo_out}]", "--set", "latents=null",
                 "--set", "aesthetic=null", "--set", "split.encode.preset=ultrafast"]) == 0
    rows = q(out, "select clip_id, start_s, end_s, status, reason, dup_group, duplicate_of from clips order by start_s")
    copy = [r for r in rows if abs(r["start_s"] - first["start_s"]) < 0.1]
    assert len(copy) == 1, rows
    assert (copy[0]["status"], copy[0]["reason"], copy[0]["duplicate_of"], copy[0]["dup_group"]) == ("filtered", "duplicate", first["clip_id"], first["clip_id"])
    # nothing else of the re-upload is called a duplicate, and the new index holds only what it kept
    assert all(r["duplicate_of"] is None for r in rows if r is not copy[0])
    kept_b = [r["clip_id"] for r in rows if r["status"] == "kept"]
    assert pq.read_table(out / "dedup" / "signatures.parquet")["clip_id"].to_pylist() == sorted(kept_b)
