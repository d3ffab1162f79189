"""WebDataset shard writing: packing limits, read-back with webdataset, byte-identical reruns."""

import hashlib
import json
import random

import fsspec
import pyarrow as pa
import pytest
import webdataset as wds

from curate.layout import Layout
from schemas import CLIPS, SCHEMA_VERSION, SHARDS, conform
from stages.shards import ShardConfig, WriteShards, assign_shards


def make_clips(tmp_path, n=7, sizes=None):
    """n clips over two sources with fake mp4 payloads of known sizes; every other clip has a caption."""
    sizes = sizes or [100 + 10 * i for i in range(n)]
    rows = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"clip{i}.mp4"
        path.write_bytes(bytes([i % 256]) * size)
        rows.append(
            {
                "clip_id": f"c{i:03d}",
                "source_id": "srcA" if i % 2 else "srcB",
                "scene_index": i,
                "start_frame": 10 * i,
                "end_frame": 10 * i + 8,
                "start_s": 0.4 * i,
                "end_s": 0.4 * i + 0.32,
                "duration_s": 0.32,
                "fps": 25.0,
                "width": 64,
                "height": 48,
                "clip_uri": str(path),
                "license": ["CC-BY-4.0", "CC0-1.0", "MIT"][i % 3],
                "author": "Ann Ünicode" if i == 0 else None,
                "caption": f"a caption for clip {i}" if i % 2 == 0 else None,
                "status": "kept",
                "clip_bytes": size,
            }
        )
    return conform(pa.Table.from_pylist(rows), CLIPS)


def test_config_rejects_non_positive():
    with pytest.raises(ValueError, match="max_samples"):
        ShardConfig(max_samples=0)
    with pytest.raises(ValueError, match="max_bytes"):
        ShardConfig(max_bytes=-1)
    with pytest.raises(ValueError, match="max_bytes"):
        ShardConfig(max_bytes=1.5)


@pytest.mark.parametrize("cfg", [ShardConfig(buckets=None, max_samples=3), ShardConfig(buckets=None, max_bytes=250), ShardConfig(2, 300, buckets=None)])
def test_assign_respects_both_limits(tmp_path, cfg):
    sizes = [120, 90, 60, 400, 30, 200, 100, 80]  # 400 exceeds max_bytes=250 / 300: a shard of its own
    out = assign_shards(make_clips(tmp_path, sizes=sizes), cfg, prefix="s/x")
    shards = out.column("shard").to_pylist()
    assert shards == sorted(shards) and shards[0] == "s/x-000000.tar"
    for shard in set(shards):
        rows = [r for r in out.to_pylist() if r["shard"] == shard]
        assert len(rows) <= cfg.max_samples
        assert len(rows) == 1 or sum(r["clip_bytes"] for r in rows) <= cfg.max_bytes
    # packing is greedy: a shard only closes when the next clip would not fit
    rows = out.to_pylist()
    for a, b in zip(rows, rows[1:]):
        if a["shard"] != b["shard"]:
            prev = [r for r in rows if r["shard"] == a["shard"]]
            assert len(prev) == cfg.max_samples or sum(r["clip_bytes"] for r in prev) + b["clip_bytes"] > cfg.max_bytes


def test_assign_is_order_independent(tmp_path):
    table = make_clips(tmp_path, n=20)
    cfg = ShardConfig(buckets=None, max_samples=4, max_bytes=500)
    expected = assign_shards(table, cfg, Layout.SHARD_PREFIX)
    keys = [(r["source_id"], r["start_frame"], r["clip_id"]) for r in expected.to_pylist()]
    assert keys == sorted(keys)
    for seed in range(3):
        order = list(range(table.num_rows))
        random.Random(seed).shuffle(order)
        assert assign_shards(table.take(order), cfg, Layout.SHARD_PREFIX).equals(expected)


def test_assign_rejects_bad_rows(tmp_path):
    table = make_clips(tmp_path, n=3)
    with pytest.raises(ValueError, match="c001"):
        assign_shards(pa.concat_tables([table, table.slice(1, 1)]), ShardConfig(buckets=None), Layout.SHARD_PREFIX)
    with pytest.raises(KeyError, match="clip_bytes"):
        assign_shards(table.drop_columns(["clip_bytes"]), ShardConfig(buckets=None), Layout.SHARD_PREFIX)


def write(tmp_path, out_root, cfg=ShardConfig(buckets=None, max_samples=4)):
    return WriteShards(cfg, out_root)(assign_shards(make_clips(tmp_path), cfg, Layout.SHARD_PREFIX))


def test_shard_reads_back_with_webdataset(tmp_path):
    clips = assign_shards(make_clips(tmp_path), ShardConfig(buckets=None, max_samples=4), Layout.SHARD_PREFIX)
    result = WriteShards(ShardConfig(buckets=None, max_samples=4), str(tmp_path / "out"))(clips)
    assert result.schema == SHARDS
    assert result.column("shard").to_pylist() == ["shards/shard-000000.tar", "shards/shard-000001.tar"]
    assert result.column("n_samples").to_pylist() == [4, 3]

    rows = {r["clip_id"]: r for r in clips.to_pylist()}
    urls = [str(tmp_path / "out" / s) for s in result.column("shard").to_pylist()]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == list(clips.column("clip_id").to_pylist())
    for sample in samples:
        row = rows[sample["__key__"]]
        expected_keys = {"__key__", "mp4", "json"} | ({"txt"} if row["caption"] is not None else set())
        assert expected_keys <= set(sample) and ("txt" in sample) == (row["caption"] is not None)
        assert sample["mp4"] == open(row["clip_uri"], "rb").read()
        if row["caption"] is not None:
            assert sample["txt"] == row["caption"]
        meta = sample["json"]
        assert meta["schema_version"] == SCHEMA_VERSION
        assert "shard" not in meta and "clip_uri" not in meta
        expected = {k: v for k, v in row.items() if k in CLIPS.names and v is not None}
        del expected["shard"], expected["clip_uri"]
        assert {k: v for k, v in meta.items() if k != "schema_version"} == expected
    assert next(s for s in samples if s["__key__"] == "c000")["json"]["author"] == "Ann Ünicode"


def test_json_is_sorted_compact_utf8(tmp_path):
    out = tmp_path / "out"
    write(tmp_path, str(out))
    raw = next(iter(wds.WebDataset(str(out / "shards/shard-000000.tar"), shardshuffle=False)))["json"]
    meta = json.loads(raw)
    assert raw == json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def test_rewrite_is_byte_identical(tmp_path):
    first = write(tmp_path, str(tmp_path / "a"))
    second = write(tmp_path, str(tmp_path / "b"))
    assert first.equals(second)
    for row in first.to_pylist():
        data = (tmp_path / "a" / row["shard"]).read_bytes()
        assert data == (tmp_path / "b" / row["shard"]).read_bytes()
        assert row["bytes"] == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
    # writing over existing shards (a retry) keeps the same bytes and leaves no temporary file
    assert write(tmp_path, str(tmp_path / "a")).equals(first)
    assert sorted(p.name for p in (tmp_path / "a" / "shards").iterdir()) == ["shard-000000.tar", "shard-000001.tar"]


def test_licenses_are_sorted_and_distinct(tmp_path):
    result = write(tmp_path, str(tmp_path / "out"), ShardConfig(buckets=None, max_samples=2))
    clips = assign_shards(make_clips(tmp_path), ShardConfig(buckets=None, max_samples=2), Layout.SHARD_PREFIX).to_pylist()
    for row in result.to_pylist():
        expected = sorted({c["license"] for c in clips if c["shard"] == row["shard"]})
        assert row["licenses"] == expected


def test_missing_clip_file_names_the_clip(tmp_path):
    clips = assign_shards(make_clips(tmp_path, n=2), ShardConfig(buckets=None), Layout.SHARD_PREFIX)
    (tmp_path / "clip1.mp4").unlink()
    with pytest.raises(FileNotFoundError, match="c001"):
        WriteShards(ShardConfig(buckets=None), str(tmp_path / "out"))(clips)
    assert not (tmp_path / "out" / "shards").exists() or not list((tmp_path / "out" / "shards").iterdir())


def test_writes_to_fsspec_memory(tmp_path):
    local = write(tmp_path, str(tmp_path / "local"))
    remote = write(tmp_path, "memory://curate-test-out")
    assert remote.equals(local)
    fs = fsspec.filesystem("memory")
    for row in remote.to_pylist():
        data = fs.cat(f"/curate-test-out/{row['shard']}")
        assert data == (tmp_path / "local" / row["shard"]).read_bytes()
    assert sorted(fs.ls("/curate-test-out/shards", detail=False)) == [
        "/curate-test-out/shards/shard-000000.tar",
        "/curate-test-out/shards/shard-000001.tar",
    ]
    fs.rm("/curate-test-out", recursive=True)


def test_buckets_keep_a_new_source_out_of_other_buckets_shards(tmp_path):
    """Hash buckets: a source's clips go to its bucket's shards only; adding a source leaves every other
    bucket's shard membership as it was, and the input order changes nothing."""
    from stages.shards import bucket_of

    cfg = ShardConfig(max_samples=2, buckets=8)
    base = make_clips(tmp_path, n=12).to_pylist()
    for i, r in enumerate(base):
        r["source_id"] = f"src{i % 5}"
    table = conform(pa.Table.from_pylist(base), CLIPS)
    first = assign_shards(table, cfg, Layout.SHARD_PREFIX)
    for r in first.to_pylist():
        assert r["shard"].startswith(f"shards/shard-{bucket_of(r['source_id'], 8):05d}-")
    shuffled = table.take(random.Random(3).sample(range(table.num_rows), table.num_rows))
    assert sorted(zip(assign_shards(shuffled, cfg, Layout.SHARD_PREFIX)["clip_id"].to_pylist(), assign_shards(shuffled, cfg, Layout.SHARD_PREFIX)["shard"].to_pylist())) == sorted(
        zip(first["clip_id"].to_pylist(), first["shard"].to_pylist()))

    extra = {**base[0], "clip_id": "new000", "source_id": "a-new-source", "start_frame": 0}
    grown = assign_shards(conform(pa.Table.from_pylist(base + [extra]), CLIPS), cfg, Layout.SHARD_PREFIX)
    new_bucket = bucket_of("a-new-source", 8)
    before = {r["clip_id"]: r["shard"] for r in first.to_pylist()}
    after = {r["clip_id"]: r["shard"] for r in grown.to_pylist()}
    moved = {c for c in before if before[c] != after[c]}
    assert all(bucket_of(r["source_id"], 8) == new_bucket for r in first.to_pylist() if r["clip_id"] in moved)
    assert len({bucket_of(r["source_id"], 8) for r in base}) > 1  # the test spans several buckets
