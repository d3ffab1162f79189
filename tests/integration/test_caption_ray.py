"""The caption step on Ray: the ordering proof through the two actor pools, and `curate run` captioning
real clips from ../shared/data with the tiny models `curate models make-tiny` writes."""

from __future__ import annotations

import dataclasses
import functools
import json
import random

import pytest
import webdataset as wds

from curate.captioning import caption_rows, caption_step
from curate.plan import run_steps
from curate.catalog import query
from curate.cli import main
from curate.storage import Output
from stages.caption import CaptionConfig, RewriteConfig
from tests.conftest import ROOT, copy_video
from tests.fakes import counting_vlm, echo_rewriter, fingerprint_vlm, generated, structured_answer
from tests.unit.test_caption import expected_fingerprints, real_rows, table

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("style", ["short", "short-two-pools", "structured", "rewrite"])
def test_ordering_proof_through_ray(ray_session, videos, style):
    """Through the one pool a cluster without GPUs runs, and the two (prepare, generate) a GPU cluster runs."""
    two_pools = style == "short-two-pools"
    style = "short" if two_pools else style
    rewrite = RewriteConfig(model="fake", max_new_tokens=600, batch_size=2, min_words=1) if style == "rewrite" else None
    cfg = CaptionConfig(frames=3, frame_size=64, batch_size=2, max_new_tokens=600, rewrite=rewrite,
                        style="short" if style == "rewrite" else style)  # fmt: skip
    rows = real_rows(videos)
    random.Random(3).shuffle(rows)
    want = expected_fingerprints(rows, cfg)
    got = caption_rows(cfg, table(rows), make_model=fingerprint_vlm, block_rows=3, make_rewriter=echo_rewriter if rewrite else None,
                       two_pools=two_pools)
    assert sorted(got["clip_id"].to_pylist()) == sorted(want)
    if style == "rewrite":  # the rewriter's actor-side batches too: each rewrite of its own clip's caption
        captions = dict(zip(got["clip_id"].to_pylist(), got["caption"].to_pylist()))
        assert captions == {cid: f"Rewritten: frames {fp} seen by the model." for cid, fp in want.items()}
        raw = dict(zip(got["clip_id"].to_pylist(), got["caption_raw"].to_pylist()))
        assert raw == {cid: f"frames {fp} seen by the model." for cid, fp in want.items()}
    elif style == "structured":
        answers = {c: json.loads(j) for c, j in zip(got["clip_id"].to_pylist(), got["caption_json"].to_pylist())}
        assert answers == {cid: structured_answer(fp) for cid, fp in want.items()}
    else:
        captions = dict(zip(got["clip_id"].to_pylist(), got["caption"].to_pylist()))
        assert captions == {cid: f"frames {fp} seen by the model." for cid, fp in want.items()}
    attempts = dict(zip(got["clip_id"].to_pylist(), got["caption_attempts"].to_pylist()))
    assert {attempts[c] for c in want} == {1, 2}  # the retry path went through the actors too


def test_caption_step_commits_and_reuses_captions_through_ray(ray_session, videos, tiny_models, tmp_path):
    out, log = Output(str(tmp_path / "out")), tmp_path / "generate.log"
    make = functools.partial(counting_vlm, str(log))  # generate() calls counted across the actors
    cfg = CaptionConfig(model=tiny_models["vlm"], frames=2, frame_size=64, max_new_tokens=1000, batch_size=2)
    clips = table(real_rows(videos)[:5])

    def run(cfg, two_pools=False):
        got = run_steps(clips, [caption_step(cfg, make_model=make, two_pools=two_pools)], out.url)
        return dict(zip(got["clip_id"].to_pylist(), got["caption"].to_pylist()))

    first = run(cfg)
    assert generated(log) == 5 and all(first.values()) and len(first) == 5
    assert list((tmp_path / "out" / "commit" / "caption").glob("*/part-*.parquet"))  # committed as they came
    again = run(cfg, two_pools=True)  # the GPU layout: preparation and generation pools
    assert generated(log) == 5  # a rerun generates nothing
    assert again == first
    run(dataclasses.replace(cfg, prompt="What happens in this video?"))
    assert generated(log) == 10  # a prompt change recaptions


def test_curate_run_captions_real_clips_with_tiny_models(ray_session, tiny_models, tmp_path):
    src = tmp_path / "in"
    copy_video("bikes.mp4", src / "bikes.mp4")
    copy_video("counter.mp4", src / "counter.mp4")
    out = tmp_path / "out"
    args = ["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"output={out}", "--set", f"input.dir={src}",
            "--set", "input.license=CC0-1.0", "--set", "select.where=null", "--set", "split.encode.preset=ultrafast", "--set", f"caption.model={tiny_models['vlm']}",
            "--set", f"caption.clip_model={tiny_models['clip']}", "--set", "caption.frames=4",
            "--set", "caption.frame_size=224", "--set", "caption.max_new_tokens=24"]  # fmt: skip
    assert main(args) == 0
    clips = json.loads(query(str(out), "select * from clips where status = 'kept' order by clip_id", "json"))
    assert len(clips) >= 5
    for c in clips:
        assert c["caption"] and c["caption_status"] == "ok", c
        assert c["caption_model"] == f"{tiny_models['vlm']} (random weights)"
        assert -1.0 <= c["caption_clip_score"] <= 1.0 and c["caption_clip_model"].endswith("(random weights)")
    # the shards carry each clip's own caption as txt, and its caption columns in json
    by_id = {c["clip_id"]: c for c in clips}
    seen = 0
    for shard in sorted((out / "shards").glob("*.tar")):
        for s in wds.WebDataset(str(shard), shardshuffle=False):
            assert s["txt"].decode() == by_id[s["__key__"]]["caption"]
            assert json.loads(s["json"])["caption_clip_score"] == pytest.approx(by_id[s["__key__"]]["caption_clip_score"])
            seen += 1
    assert seen == len(clips)


def test_missing_vlm_weights_stop_the_run_at_start(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"output={out}",
               "--set", f"caption.model={tmp_path / 'no-such-model'}"])  # fmt: skip
    assert rc == 2
    assert "caption.model: no such folder" in capsys.readouterr().err
    assert not (out / "samples").exists()  # stopped before any work
