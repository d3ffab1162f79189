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


def test_dedup_by_clip_embedding_reuses_the_aesthetic_pass(tmp_path, videos):
    """dedup.embedding_similarity: the aesthetic step keeps each clip's CLIP embedding in its log (one
    CLIP pass for both); the finalize groups clips of different scenes whose embeddings are that alike.
    The demo's CLIP is random, so the test takes its threshold from the embeddings the job committed:
    a second run at the highest cross-scene cosine groups that pair, and computes no embedding again."""
    from curate.bench.dedup import cut
    from stages.dedup import embeddings_array

    inp = tmp_path / "in"
    inp.mkdir()
    cut(str(videos / "bikes.mp4"), 1.2, 6.5, str(inp / "bikes.mp4"))  # three shots
    out = tmp_path / "out"
    args = ["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"output={out}", "--set", f"input.dir={inp}", "--set", "input.license=CC0-1.0",
            "--set", "latents=null", "--set", "caption=null", "--set", "select.where=null", "--set", "split.encode.preset=ultrafast"]
    assert main([*args, "--set", "dedup.embedding_similarity=1.0"]) == 0
    kept = q(out, "select clip_id, scene_index from clips where status = 'kept' order by clip_id")
    kept_groups = q(out, "select clip_id, dup_group from clips where status = 'kept'")
    assert len({r["scene_index"] for r in kept}) >= 2, kept
    parts = sorted((out / "commit" / "aesthetic").glob("*/part-*.parquet"))
    log = pq.ParquetDataset([str(p) for p in parts]).read()
    emb = {i: e for i, e in zip(log["id"].to_pylist(), embeddings_array(log["_clip_embedding"]))}
    assert {r["clip_id"] for r in kept} <= set(emb)
    index = pq.read_table(out / "dedup" / "signatures.parquet")
    assert index["embedding"].null_count == 0 and index.num_rows == len(kept)
    scene = {r["clip_id"]: r["scene_index"] for r in kept}
    ids = sorted(scene)
    cos = {(a, b): float(emb[a] @ emb[b]) for a in ids for b in ids if a < b and scene[a] != scene[b]}
    (a, b), best = max(cos.items(), key=lambda kv: kv[1])
    assert main([*args, "--set", f"dedup.embedding_similarity={best - 1e-6:.9f}"]) == 0
    assert sorted((out / "commit" / "aesthetic").glob("*/part-*.parquet")) == parts  # the embeddings were reused
    rows = {r["clip_id"]: r for r in q(out, "select clip_id, status, reason, dup_group, duplicate_of from clips")}
    assert rows[a]["dup_group"] == rows[b]["dup_group"]
    dup = [rows[c] for c in (a, b) if rows[c]["duplicate_of"] is not None]
    assert len(dup) == 1 and (dup[0]["status"], dup[0]["reason"]) == ("filtered", "duplicate")
    # exactly the groups of the first run joined by the pairs at least that alike, nothing else
    first = {r["clip_id"]: r["dup_group"] for r in kept_groups}
    label = {c: c for c in ids}

    def root(c):
        while label[c] != c:
            c = label[c]
        return c

    for x in ids:
        for y in ids:
            if x < y and (first[x] == first[y] or cos.get((x, y), -1.0) >= best - 1e-6):
                label[root(y)] = root(x)
    want = {frozenset(c for c in ids if root(c) == root(x)) for x in ids}
    got = {frozenset(c for c in ids if rows[c]["dup_group"] == rows[x]["dup_group"]) for x in ids}
    assert got == want
