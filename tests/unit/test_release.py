"""The released dataset without Ray: policy -> shards -> index/LICENSES/ATTRIBUTION/card, verify, takedown.

A property test draws random manifests and policies and checks, against an oracle written out by
hand, that no disallowed licence reaches a shard, that every attribution-licensed source in a shard
has its ATTRIBUTION row, and that after a takedown no byte of the source is left and verify passes.
"""

import csv
import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.config import to_dict
from curate.layout import Layout
from curate.release import prepare_clips, write_release
from curate.storage import Output
from curate.takedown import takedown
from curate.verify import verify
from schemas import CLIPS, SHARDS, SOURCES, conform
from stages.policy import PolicyConfig
from stages.shards import ShardConfig, WriteShards, assign_shards

# licence -> the ways to satisfy it, spelled out by hand (the oracle the code is checked against)
ORACLE = {
    "CC0-1.0": [{"CC0-1.0"}],
    "CC-BY-4.0": [{"CC-BY-4.0"}],
    "CC-BY-SA-4.0": [{"CC-BY-SA-4.0"}],
    "CC-BY-NC-4.0": [{"CC-BY-NC-4.0"}],
    "MIT": [{"MIT"}],
    "GPL-3.0-only": [{"GPL-3.0-only"}],
    "MIT OR GPL-3.0-only": [{"MIT"}, {"GPL-3.0-only"}],
    "MIT AND GPL-3.0-only": [{"MIT", "GPL-3.0-only"}],
    "CC0-1.0 OR CC-BY-4.0": [{"CC0-1.0"}, {"CC-BY-4.0"}],
    "NOASSERTION": [{"NOASSERTION"}],
    "LicenseRef-acme": [{"LicenseRef-acme"}],
}
KEYS = ["CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-NC-4.0", "MIT", "GPL-3.0-only", "NOASSERTION"]


def oracle(license, allowed, credited, require):
    """(allowed, needs attribution) by the rules of the README, from ORACLE."""
    options = [alt for alt in ORACLE[license] if alt <= set(allowed)]
    needs = bool(options) and all(any(k.startswith("CC-BY-") for k in alt) for alt in options)
    return bool(options) and not (needs and require and not credited), needs


def token(sid: str) -> bytes:
    return f"<<payload of {sid}>>".encode()


def build(root: Path, policy: PolicyConfig, sources: list[dict], clips_per_source: list[int], shard_cfg=ShardConfig(buckets=None, max_samples=3)):
    """What the pipeline does after the split, with plain calls: an output folder `root`."""
    out = Output(str(root))
    out.makedirs()
    job = {"name": "t", "output": str(root), "shards": to_dict(shard_cfg), "policy": to_dict(policy)}
    out.write_text("job.yaml", yaml.safe_dump(job, sort_keys=False))
    (root / "clips").mkdir(exist_ok=True)
    rows = []
    for src, n in zip(sources, clips_per_source):
        for k in range(n):
            path = root / "clips" / f"{src['source_id']}_{k}.mp4"
            path.write_bytes(b"\x00\x00\x00\x18ftypisom" + token(src["source_id"]) * (k + 2))
            rows.append({**{c: src.get(c) for c in ("source_id", "license", "title", "author", "source_url", "attribution")},
                         "clip_id": f"{src['source_id']}_{k}", "scene_index": k, "start_frame": 10 * k, "end_frame": 10 * k + 10,
                         "start_s": k * 0.4, "end_s": k * 0.4 + 0.4, "duration_s": 0.4, "fps": 25.0, "width": 32, "height": 24,
                         "clip_uri": str(path), "clip_bytes": path.stat().st_size, "source_uri": src["uri"], "status": "kept",
                         "caption": f"clip {k}" if k % 2 else None})  # fmt: skip
    sources_t = conform(pa.Table.from_pylist([{**s, "status": "ok"} for s in sources]), SOURCES)
    clips = prepare_clips(conform(pa.Table.from_pylist(rows), CLIPS), sources_t, policy, out)
    kept = clips.filter(pc.equal(clips["status"], "kept"))
    shards = SHARDS.empty_table()
    if kept.num_rows:
        kept = assign_shards(kept, shard_cfg, Layout.SHARD_PREFIX)
        shards = WriteShards(shard_cfg, out.url)(kept)
        shard_of = dict(zip(kept["clip_id"].to_pylist(), kept["shard"].to_pylist()))
        clips = clips.set_column(clips.schema.get_field_index("shard"), "shard", pa.array([shard_of.get(c) for c in clips["clip_id"].to_pylist()], pa.string()))
    for name, table in (("sources", sources_t), ("clips", clips), ("shards", shards)):
        out.write_table(name, table, buckets=shard_cfg.buckets if name != "shards" else None)  # as the finalize lays them out
    write_release(out, job)
    return clips


def tar_samples(root: Path):
    """(shard, key, {ext: bytes}) for every sample in every tar under root/shards."""
    for path in sorted((root / "shards").rglob("*.tar")) if (root / "shards").exists() else []:
        samples = {}
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, files in samples.items():
            yield str(path.relative_to(root)), key, files


def attribution(root: Path) -> dict:
    with open(root / "ATTRIBUTION.csv", newline="") as f:
        return {r["source_id"]: r for r in csv.DictReader(f)}


source_st = st.fixed_dictionaries({
    "license": st.sampled_from(sorted(ORACLE)),
    "author": st.sampled_from([None, "Ann", "Bo Ünicode"]),
    "attribution": st.sampled_from([None, None, "Film by C. D."]),
    "source_url": st.sampled_from([None, "https://example.org/v"]),
})  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drawn=st.lists(st.tuples(source_st, st.integers(1, 3)), min_size=1, max_size=6),
    allowed=st.lists(st.sampled_from(KEYS), unique=True),
    require=st.booleans(),
    opt_out=st.sets(st.integers(0, 5), max_size=2),
    by_uri=st.booleans(),
    victim=st.integers(0, 5),
)
def test_property_policy_attribution_takedown(drawn, allowed, require, opt_out, by_uri, victim):
    sources = []
    for i, (src, _) in enumerate(drawn):
        sid = hashlib.sha256(f"source {i}".encode()).hexdigest()[:16]
        url = f"{src['source_url']}/{i}" if src["source_url"] else None
        sources.append({**src, "source_id": sid, "sha256": sid * 4, "uri": f"/videos/v{i}.mp4", "source_url": url, "title": f"video {i}"})
    opted = [sources[i]["uri"] if by_uri else sources[i]["source_id"] for i in sorted(opt_out) if i < len(sources)]
    policy = PolicyConfig(allowed_licenses=tuple(allowed), require_attribution=require, opt_out=tuple(opted))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "out"
        build(root, policy, sources, [n for _, n in drawn])
        by_id = {s["source_id"]: s for s in sources}
        blocked = {s["source_id"] for s in sources if s["uri"] in opted or s["source_id"] in opted}

        in_shards: dict[str, int] = {}
        for _, key, files in tar_samples(root):
            meta = json.loads(files["json"])
            src = by_id[meta["source_id"]]
            ok, _ = oracle(src["license"], allowed, bool(src["author"] or src["attribution"]), require)
            assert ok and meta["source_id"] not in blocked, meta  # no disallowed licence reaches a shard
            assert meta["license"] == src["license"] and meta["source_sha256"] == src["sha256"]
            in_shards[meta["source_id"]] = in_shards.get(meta["source_id"], 0) + 1
        # and every allowed clip does
        for (src, n), s in zip(drawn, sources):
            ok, needs = oracle(s["license"], allowed, bool(s["author"] or s["attribution"]), require)
            assert in_shards.get(s["source_id"], 0) == (n if ok and s["source_id"] not in blocked else 0)

        credits = attribution(root)
        for sid in in_shards:
            _, needs = oracle(by_id[sid]["license"], allowed, True, require)
            assert (sid in credits) == needs
            if needs:
                assert int(credits[sid]["clips"]) == in_shards[sid] and credits[sid]["license"] == by_id[sid]["license"]
        assert verify(str(root)) == []

        if not in_shards:
            return
        sid = sorted(in_shards)[victim % len(in_shards)]
        before = {p: p.read_bytes() for p in (root / "shards").rglob("*.tar")}
        takedown(str(root), by_id[sid]["uri"] if by_uri else sid, reason="request")
        for path, data in before.items():
            now = path.read_bytes() if path.exists() else None
            if token(sid) not in data:
                assert now == data  # shards without the source are not rewritten
        for path in (root / "shards").rglob("*"):
            data = path.read_bytes()
            assert token(sid) not in data and sid.encode() not in data
        assert not list((root / "clips").glob(f"{sid}_*"))
        assert sid not in attribution(root)
        assert verify(str(root)) == []


def test_verify_names_a_tampered_tar_and_a_policy_breach(tmp_path):
    sources = [{"source_id": f"{i:016x}", "sha256": f"{i:064x}", "uri": f"/v/{i}.mp4", "license": lic, "author": "Ann"}
               for i, lic in enumerate(["CC-BY-4.0", "MIT", "CC0-1.0", "MIT"])]  # fmt: skip
    root = tmp_path / "out"
    build(root, PolicyConfig(), sources, [2, 2, 2, 2], ShardConfig(buckets=None, max_samples=2))
    assert verify(str(root)) == []
    assert [(r["source_id"], r["author"], r["clips"]) for r in attribution(root).values()] == [(sources[0]["source_id"], "Ann", "2")]
    index = json.loads((root / "index.json").read_text())
    assert index["n_shards"] == 4 and index["n_samples"] == 8
    licences = (root / "LICENSES.md").read_text()
    assert "https://spdx.org/licenses/CC-BY-4.0.html" in licences and "| `MIT` | 4 |" in licences
    card = (root / "README.md").read_text()
    assert "## Counts surviving each step" in card and "| in shards | 8 clips" in card and "allowed_licenses" in card

    tampered = root / "shards" / "shard-000001.tar"
    data = bytearray(tampered.read_bytes())
    data[700] ^= 0xFF
    tampered.write_bytes(bytes(data))
    problems = verify(str(root))
    assert problems and all(p.startswith("shards/shard-000001.tar") for p in problems), problems
    assert "sha256" in problems[0]

    # the same samples re-packed by another tool (headers not fixed) are told apart too
    original = tampered.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(original)) as src, tarfile.open(tampered, "w") as dst:
        for m in src:
            data_m = src.extractfile(m).read()
            m.mtime, m.uname = 1_700_000_000, "someone"
            dst.addfile(m, io.BytesIO(data_m))
    assert any("not written by curate" in p and p.startswith("shards/shard-000001.tar") for p in verify(str(root)))
    tampered.write_bytes(original)

    # the policy in job.yaml changed after the shards were made: the MIT samples are named
    tampered.write_bytes(bytes(data[:700]) + bytes([data[700] ^ 0xFF]) + bytes(data[701:]))
    job = yaml.safe_load((root / "job.yaml").read_text())
    job["policy"]["allowed_licenses"] = ["CC0-1.0", "CC-BY-4.0"]
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    (root / "shards" / "shard-000009.tar").write_bytes(b"")
    problems = verify(str(root))
    breach = [p for p in problems if "MIT is not allowed" in p]
    assert len(breach) == 4 and all(sources[1]["source_id"] in p or sources[3]["source_id"] in p for p in breach)
    assert any(p.startswith("shards/shard-000009.tar: a shard file") for p in problems)


def test_takedown_of_unknown_source_is_an_error(tmp_path):
    from curate.release import TakedownError

    sources = [{"source_id": "a" * 16, "sha256": "a" * 64, "uri": "/v/a.mp4", "license": "MIT"}]
    build(tmp_path / "out", PolicyConfig(), sources, [1])
    with pytest.raises(TakedownError, match="nothing-like-it"):
        takedown(str(tmp_path / "out"), "nothing-like-it")


def test_takedown_emptying_a_shard_removes_it_and_is_recorded(tmp_path):
    sources = [{"source_id": f"{i:016x}", "sha256": f"{i:064x}", "uri": f"/v/{i}.mp4", "license": "MIT"} for i in range(2)]
    root = tmp_path / "out"
    build(root, PolicyConfig(), sources, [2, 2], ShardConfig(buckets=None, max_samples=2))
    takedown(str(root), "/v/0.mp4", reason="DMCA 123")
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["shard-000001.tar"]
    out = Output(str(root))
    rows = out.read_table("takedowns").to_pylist()
    assert [(r["source_id"], r["request"], r["reason"], r["clips_removed"], r["shards_rewritten"]) for r in rows] == [
        (sources[0]["source_id"], "/v/0.mp4", "DMCA 123", 2, ["shards/shard-000000.tar"])
    ]
    clips = {r["clip_id"]: r for r in out.read_table("clips").to_pylist()}
    assert {(c["status"], c["reason"], c["shard"]) for k, c in clips.items() if k.startswith(sources[0]["source_id"])} == {("filtered", "takedown", None)}
    assert "DMCA 123" in (root / "README.md").read_text()
    assert json.loads((root / "index.json").read_text())["n_samples"] == 2
    assert verify(str(root)) == []


def test_takedown_reads_and_rewrites_only_the_buckets_of_its_source(tmp_path, monkeypatch):
    """Tables hive-partitioned by source bucket (as a run writes them): the takedown reads the clips of
    the taken-down source's bucket only, rewrites that bucket's part and no other, and the output
    verifies; the source is found by its URL through a batched scan of the sources table."""
    sources = [{"source_id": f"{i:016x}", "sha256": f"{i:064x}", "uri": f"/v/{i}.mp4", "license": "MIT",
                "source_url": f"https://example.org/{i}"} for i in range(12)]  # fmt: skip
    root = tmp_path / "out"
    build(root, PolicyConfig(), sources, [2] * 12, ShardConfig(buckets=4, max_samples=2))
    parts = {p.relative_to(root): (p.read_bytes(), p.stat().st_mtime_ns) for p in (root / "tables" / "clips").rglob("*.parquet")}
    assert len(parts) >= 3  # several buckets hold sources

    read_table = Output.read_table

    def not_clips(self, name):
        assert name != "clips", "the whole clips table was read"
        return read_table(self, name)

    monkeypatch.setattr(Output, "read_table", not_clips)
    victim = sources[5]
    takedown(str(root), victim["source_url"], reason="request")
    monkeypatch.undo()
    from stages.shards import bucket_of

    mine = Path("tables/clips") / f"bucket={bucket_of(victim['source_id'], 4):05d}" / "part-00000.parquet"
    now = {p.relative_to(root): (p.read_bytes(), p.stat().st_mtime_ns) for p in (root / "tables" / "clips").rglob("*.parquet")}
    assert set(now) == set(parts) and now[mine] != parts[mine]
    assert all(now[p] == parts[p] for p in parts if p != mine)  # no other bucket touched
    clips = Output(str(root)).read_table("clips").to_pylist()
    assert {(c["status"], c["reason"]) for c in clips if c["source_id"] == victim["source_id"]} == {("filtered", "takedown")}
    assert all(c["status"] == "kept" and c["shard"] for c in clips if c["source_id"] != victim["source_id"])
    assert len(clips) == 24 and verify(str(root)) == []


def test_opt_out_file_and_source_url_match(tmp_path):
    sources = [{"source_id": f"{i:016x}", "sha256": f"{i:064x}", "uri": f"/v/{i}.mp4", "license": "MIT",
                "source_url": f"https://example.org/{i}"} for i in range(3)]  # fmt: skip
    listing = tmp_path / "opt-out.txt"
    listing.write_text("# people who asked\nhttps://example.org/1   # by URL\n\n")
    clips = build(tmp_path / "out", PolicyConfig(opt_out=(sources[2]["source_id"],), opt_out_file=str(listing)), sources, [1, 1, 1])
    got = {r["source_id"]: (r["status"], r["reason"], r["error"]) for r in clips.to_pylist()}
    assert got[sources[0]["source_id"]][0] == "kept"
    for i, entry in ((1, "https://example.org/1"), (2, sources[2]["source_id"])):
        status, reason, error = got[sources[i]["source_id"]]
        assert (status, reason) == ("filtered", "licence") and entry in error


def test_data_card_lists_the_ocr_and_nsfw_models_with_versions(tmp_path):
    from importlib.metadata import version

    from curate.config import JobConfig, InputConfig
    from curate.release import connect_tables, data_card

    out = Output(str(tmp_path))
    for name, schema in (("sources", SOURCES), ("clips", CLIPS), ("shards", SHARDS)):
        out.write_table(name, schema.empty_table())
    job = to_dict(JobConfig(output="out", input=InputConfig(dir="in")))
    card = data_card(job, connect_tables(out))
    assert f"PP-OCRv6 small detection + recognition from rapidocr {version('rapidocr')} on onnxruntime {version('onnxruntime')}" in card
    assert "`PP-OCRv6_det_small.onnx` (sha256 " in card and "`PP-OCRv6_rec_small.onnx` (sha256 " in card
    assert f"NudeNet detector from nudenet {version('nudenet')}" in card and "`320n.onnx` (sha256 " in card
    assert "nsfw_score counts FEMALE_BREAST_EXPOSED" in card
    from stages.watermark_net import NET_FILE, provenance

    # the learned watermark detector, with what it gave on videos it was not trained over (its limit)
    assert "curate's learned overlay detector `watermark_net.pt`" in card
    assert f"on videos it was not trained over: {provenance(NET_FILE)['unseen_footage']}" in card
    beside = "with the weight-free `edges` detector beside it"
    assert beside in card and beside not in data_card({**job, "watermark": {**job["watermark"], "method": "net"}}, connect_tables(out))
    # without the text section the watermark step still reads the mean frame with the same OCR models
    no_text = data_card({**job, "text": None, "nsfw": None}, connect_tables(out))
    assert "watermark, words on the mean frame" in no_text and "(longer side 960 px)" in no_text and "`PP-OCRv6_det_small.onnx` (sha256 " in no_text and "NudeNet" not in no_text
    off = data_card({**job, "text": None, "nsfw": None, "watermark": {**job["watermark"], "mean_words": False}}, connect_tables(out))
    assert "PP-OCR" not in off and "NudeNet" not in off
