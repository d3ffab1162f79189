"""Every awkward or broken input is processed or recorded with a reason; good files are unaffected."""

import json
import os

import pyarrow as pa
import pytest

from curate.catalog import query
from curate.cli import main
from stages.ingest import Ingest, fold_duplicates
from stages.media import EncodeSettings
from stages.split import Split, SplitConfig, flatten
from tests.bad_inputs import make_corpus
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ffmpeg):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, make_corpus(folder, ffmpeg)


def snapshot(folder):
    return {os.path.join(d, f): os.lstat(os.path.join(d, f)).st_mtime_ns for d, _, files in os.walk(folder) for f in files}


def test_stages_record_every_case(corpus, tmp_path):
    folder, expect = corpus
    uris = [str(folder / name) for name in sorted(expect)]
    sources = fold_duplicates(Ingest()(pa.table({"uri": uris, "license": ["MIT"] * len(uris)})))
    split = Split(SplitConfig(min_clip_s=0.5, encode=EncodeSettings(preset="ultrafast")), str(tmp_path / "clips"))(sources)
    rows, _, clips = flatten(split)
    got = {os.path.basename(r["uri"]): r for r in rows.to_pylist()}
    assert set(got) == set(expect)
    for name, (status, reason, frames) in expect.items():
        row = got[name]
        assert (row["status"], row["reason"]) == (status, reason), (name, row["error"])
        if status == "error":
            assert row["error"], name
        else:
            assert row["n_frames"] == frames, name
    by_source = {}
    for c in clips.to_pylist():
        by_source.setdefault(c["source_id"], []).append(c)
    for name, (status, _, frames) in expect.items():
        if status == "ok" and frames >= 50:
            mine = by_source[got[name]["source_id"]]
            assert [c["status"] for c in mine] == ["kept"], (name, mine)
            assert mine[0]["width"] % 2 == 0 and mine[0]["height"] % 2 == 0  # odd sizes are cropped to even
    one = by_source[got["one_frame.mp4"]["source_id"]]
    assert [(c["status"], c["reason"]) for c in one] == [("filtered", "too_short")]


@pytest.mark.ray
def test_job_over_the_corpus_and_a_manifest(corpus, ray_session, tmp_path, videos):
    folder, expect = corpus
    before = snapshot(folder)
    out = tmp_path / "out"
    job = str(ROOT / "jobs" / "demo.yaml")
    fast = ["--set", "split.encode.preset=ultrafast", "--set", "split.min_clip_s=0.5", "--set", "select.where=null"]
    assert main(["run", job, "--set", f"input.dir={folder}", "--set", "input.license=MIT", "--set", f"output={out}", *fast]) == 0
    rows = json.loads(query(str(out), "select uri, status, reason, error from sources", "json"))
    got = {os.path.basename(r["uri"]): (r["status"], r["reason"]) for r in rows}
    assert got == {name: (s, r) for name, (s, r, _) in expect.items()}
    assert all(r["error"] for r in rows if r["status"] == "error")  # each error row says what went wrong
    # and the rest is processed to the end: each clip of a good 2 s source is in a shard, or filtered as a
    # duplicate of one that is (most of them are the same test pattern in other containers)
    clips = json.loads(query(str(out), "select s.uri, c.status, c.reason, c.shard, d.shard as original_shard from clips c "
                                       "join sources s using (source_id) left join clips d on d.clip_id = c.duplicate_of", "json"))
    good = {name for name, (s, _, frames) in expect.items() if s == "ok" and frames >= 50}
    mine = [c for c in clips if os.path.basename(c["uri"]) in good]
    assert {os.path.basename(c["uri"]) for c in mine} == good
    assert all(c["shard"] if c["status"] == "kept" else (c["reason"], bool(c["original_shard"])) == ("duplicate", True) for c in mine), mine
    assert any(c["status"] == "kept" for c in mine)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_files"] == 1  # sub/loop: listed as a non-video, not followed
    assert snapshot(folder) == before  # nothing written beside the inputs

    # a manifest: a missing file, a row without uri, a path with '..', one file under two names
    sub = tmp_path / "m" / "sub"
    sub.mkdir(parents=True)
    (sub / "bikes.mp4").write_bytes((videos / "bikes.mp4").read_bytes())
    (tmp_path / "m" / "bikes again.mp4").write_bytes((videos / "bikes.mp4").read_bytes())
    manifest = tmp_path / "m" / "manifest.jsonl"
    manifest.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"uri": "sub/bikes.mp4", "license": "CC-BY-4.0", "author": "A"},
                {"uri": "sub/../bikes again.mp4", "license": "CC-BY-4.0"},
                {"uri": "gone.mp4", "license": "MIT"},
                {"uri": None, "license": "MIT"},
            ]
        )
        + "\n"
    )
    out2 = tmp_path / "out2"
    assert main(["run", job, "--set", f"input.manifest={manifest}", "--set", f"output={out2}", *fast]) == 0
    rows = json.loads(query(str(out2), "select uri, alias_uris, status, reason from sources order by uri", "json"))
    by_reason = {r["reason"]: r for r in rows}
    assert by_reason["missing"]["uri"].endswith("gone.mp4")
    assert by_reason["bad_manifest_row"]["uri"] == ""
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 1 and len(ok[0]["alias_uris"]) == 1  # the same bytes under two names: one source
    assert {ok[0]["uri"], ok[0]["alias_uris"][0]} == {str(sub / "bikes.mp4"), str(tmp_path / "m" / "bikes again.mp4")}
    kept = json.loads(query(str(out2), "select count(*) as n from clips where status = 'kept'", "json"))[0]["n"]
    assert kept >= 4


@pytest.fixture(scope="module")
def timestamp_corpus(tmp_path_factory, ffmpeg):
    from tests.bad_inputs import make_timestamp_corpus

    folder = tmp_path_factory.mktemp("timestamps")
    return folder, make_timestamp_corpus(folder, ffmpeg)


@pytest.mark.parametrize("one_pass", [True, False])
def test_timestamps_from_the_wild_lose_no_frame(timestamp_corpus, tmp_path, one_pass):
    """Packed B-frames, re-timed passthrough, a stream-copy cut, a restart, a 40-minute jump, MPEG-2 PS:
    every source ok, every decoded frame in exactly one clip row, durations from the frames."""
    import av

    folder, expect = timestamp_corpus
    uris = [str(folder / name) for name in sorted(expect)]
    sources = Ingest()(pa.table({"uri": uris, "license": ["MIT"] * len(uris)}))
    cfg = SplitConfig(min_clip_s=0.5, one_pass=one_pass, encode=EncodeSettings(preset="ultrafast"))
    rows, scenes, clips = flatten(Split(cfg, str(tmp_path / "clips"))(sources))
    scenes, clips = scenes.to_pylist(), clips.to_pylist()
    for row in rows.to_pylist():
        name, want = os.path.basename(row["uri"]), expect[os.path.basename(row["uri"])]
        assert (row["status"], row["reason"]) == ("ok", None), (name, row["error"])
        assert row["n_frames"] == want["frames"], name
        assert abs(row["duration_s"] - want["duration_s"]) <= 0.08, (name, row["duration_s"])
        assert row["timestamps"] == want["timestamps"], (name, row["timestamps_note"])
        assert (row["timestamps_note"] is None) == (want["timestamps"] == "ok"), name
        starts = {s["start_frame"] for s in scenes if s["source_id"] == row["source_id"]}
        assert set(want["breaks"]) <= starts, (name, sorted(starts))
        mine = sorted((c for c in clips if c["source_id"] == row["source_id"]), key=lambda c: c["start_frame"])
        bounds = [(c["start_frame"], c["end_frame"]) for c in mine]
        assert bounds[0][0] == 0 and bounds[-1][1] == want["frames"], (name, bounds)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])), (name, bounds)  # no gap, no overlap
        kept = [c for c in mine if c["status"] == "kept"]
        assert kept, (name, [(c["status"], c["reason"], c["error"]) for c in mine])
        assert abs(sum(c["duration_s"] for c in mine) - row["duration_s"]) <= 0.08, name
        for c in kept:
            with av.open(c["clip_uri"]) as f:
                pts = [fr.pts for fr in f.decode(video=0)]
            assert len(pts) == c["end_frame"] - c["start_frame"] == c["n_frames"], (name, c["clip_id"])
            assert all(b > a for a, b in zip(pts, pts[1:])), (name, pts[:10])
