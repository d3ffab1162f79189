"""Whole jobs through the CLI on the session's local Ray instance."""

import json

import pytest
import webdataset as wds

from curate.cli import main
from curate.catalog import query
from stages.camera import LABELS
from tests.conftest import ROOT

pytestmark = pytest.mark.ray

FAST = ["--set", "split.encode.preset=ultrafast"]


def q(out, sql):
    return json.loads(query(str(out), sql, "json"))


def test_demo_job_writes_tables_clips_and_shards(demo_out, capsys):
    counts = {r["status"]: r["n"] for r in q(demo_out, "select status, count(*) as n from clips group by 1")}
    assert counts.get("kept", 0) > 0
    sources = q(demo_out, "select * from sources")
    assert sources and all(s["status"] == "ok" and s["license"] == "CC0-1.0" for s in sources)

    # scenes start exactly at the cuts the sample generator made
    truth = json.loads((demo_out / "samples" / "ground_truth.json").read_text())
    assert len(truth["videos"]) == len(sources)
    for name, video in truth["videos"].items():
        got = [r["start_frame"] for r in q(demo_out, f"select start_frame from scenes join sources using (source_id) where uri like '%/{name}' order by 1")]
        assert got == [0] + video["cuts"], name

    # every kept clip is in exactly one shard, and every shard opens with webdataset and holds the keys
    shards = q(demo_out, "select * from shards order by shard")
    assert shards
    seen = []
    for shard in shards:
        samples = list(wds.WebDataset(str(demo_out / shard["shard"]), shardshuffle=False))
        assert len(samples) == shard["n_samples"]
        for s in samples:
            assert {"__key__", "mp4", "json", "txt"} <= set(s)
            meta = json.loads(s["json"])
            assert meta["clip_id"] == s["__key__"] and meta["license"] == "CC0-1.0"
            assert meta["text_area"] >= 0 and 0 <= meta["nsfw_score"] < 0.5 and isinstance(meta["nsfw_labels"], list)
            # the demo captions every kept clip (tiny random VLM and CLIP, marked so)
            assert s["txt"].decode() == meta["caption"] and meta["caption_status"] == "ok"
            assert meta["caption_model"].endswith("(random weights)") and -1 <= meta["caption_clip_score"] <= 1
            assert meta["camera_motion"] in LABELS and meta["dup_group"] == meta["clip_id"]  # camera and dedup columns travel too
            assert s["mp4"][4:8] == b"ftyp"
            seen.append(s["__key__"])
    kept = [r["clip_id"] for r in q(demo_out, "select clip_id from clips where status = 'kept' order by 1")]
    assert sorted(seen) == kept
    in_table = q(demo_out, "select count(*) as n from clips where status = 'kept' and shard is not null")[0]["n"]
    assert in_table == len(kept)

    summary = json.loads((demo_out / "summary.json").read_text())
    assert summary["clips_kept"] == len(kept) and summary["shards"] == len(shards)
    assert summary["hours_out"] > 0


def test_rerun_gives_the_same_tables_and_shards(demo_out, ray_session):
    before = {t: q(demo_out, f"select * from {t} order by all") for t in ("sources", "scenes", "clips", "shards")}
    clip_times = {p.name: p.stat().st_mtime_ns for p in (demo_out / "clips").iterdir()}
    captions = {p: p.stat().st_mtime_ns for p in (demo_out / "commit" / "caption").rglob("part-*.parquet")}
    assert captions  # the demo committed its captions
    assert main(["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"output={demo_out}", *FAST]) == 0
    # the finished demo run again generates no caption: no caption part is written, none rewritten
    assert {p: p.stat().st_mtime_ns for p in (demo_out / "commit" / "caption").rglob("part-*.parquet")} == captions
    after = {t: q(demo_out, f"select * from {t} order by all") for t in before}
    assert after == before  # same ids, same rows, same shard sha256
    # clips already written are not written again
    assert {p.name: p.stat().st_mtime_ns for p in (demo_out / "clips").iterdir()} == clip_times


def test_every_real_video_is_processed(ray_session, tmp_path, videos, ground_truth):
    out = tmp_path / "real"
    rc = main(["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"input.dir={videos}", "--set", "input.license=CC-BY-4.0",
               "--set", f"output={out}", "--set", "split.encode.max_height=144", *FAST])
    assert rc == 0
    sources = q(out, "select uri, status, license, n_frames from sources")
    assert len(sources) == len(list(videos.iterdir()))
    assert all(s["status"] == "ok" and s["license"] == "CC-BY-4.0" for s in sources), sources
    starts = [r["start_frame"] for r in q(out, "select start_frame from scenes join sources using (source_id) where uri like '%/bikes.mp4' order by 1")]
    assert starts == [0, 30, 76, 137, 187, 242]
    for s in sources:
        name = s["uri"].rsplit("/", 1)[1]
        frames = ground_truth.get(name, {}).get("frames") or ground_truth.get(name, {}).get("decoded_frames")
        if frames:
            assert s["n_frames"] == frames, name


def test_bad_job_and_unreadable_input_exit_non_zero(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("output: out\ninput: {dir: /nowhere}\nsplit: {min_clip: 1}\n")
    assert main(["run", str(job)]) == 2
    assert "split.min_clip: unknown key" in capsys.readouterr().err
    job.write_text(f"output: {tmp_path / 'o'}\ninput: {{dir: {tmp_path / 'nowhere'}}}\n")
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "not a readable folder" in err and len(err.strip().splitlines()) == 1


def test_demo_job_scores_every_clip_and_names_the_failed_condition(demo_out):
    rows = q(demo_out, "select c.*, s.uri from clips c join sources s using (source_id)")
    truth = json.loads((demo_out / "samples" / "ground_truth.json").read_text())
    scored = [r for r in rows if r["clip_uri"]]
    assert scored and all(r["motion_score"] is not None and r["aesthetic_score"] is not None
                          and r["watermark_score"] is not None for r in scored)
    # text and NSFW with the real models from the rapidocr and nudenet wheels: nothing unsafe; text only
    # where ffmpeg's testsrc2 draws its timecode and frame counter
    assert all(r["text_area"] is not None and r["text_static"] is not None and r["ocr_text"] is not None
               and r["nsfw_score"] is not None and r["nsfw_labels"] is not None for r in scored)
    assert all(r["nsfw_score"] < 0.5 for r in scored)
    assert all("random" in r["aesthetic_model"] for r in scored)  # the demo's CLIP has random weights, marked
    for r in scored:
        scene = next(s for s in truth["videos"][r["uri"].rsplit("/", 1)[1]]["scenes"] if s["start_frame"] == r["start_frame"])
        if scene["source"] == "testsrc2 pattern":
            assert r["text_area"] > 0.005 and r["text_frames"] == 1.0 and "00:00:0" in r["ocr_text"], r
        else:
            assert r["text_area"] < 0.005 and r["ocr_text"] == "", r
        assert r["camera_motion"] in LABELS
        if scene["content"] == "frozen":
            assert r["motion_score"] < 0.01 and r["status"] == "filtered" and r["camera_motion"] == "static"
            assert r["reason"] == "select: motion_score >= 0.05"
        else:
            assert r["motion_score"] > 0.5
    # filtered clips keep their scores, and SQL can replay other thresholds
    replay = q(demo_out, "select count(*) as n from clips where clip_uri is not null and motion_score >= 0.05")[0]["n"]
    assert replay == sum(1 for r in scored if r["motion_score"] >= 0.05)
    # no kept clip fails the job's predicate
    assert all(r["motion_score"] >= 0.05 and r["watermark_score"] < 0.5 and r["nsfw_score"] < 0.5 for r in rows if r["status"] == "kept")


def test_missing_aesthetic_weights_stop_the_job_at_start(tmp_path, capsys):
    code = main(["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"output={tmp_path / 'out'}", "--set", "aesthetic.weights=null"])
    assert code == 2
    assert "aesthetic.weights is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
