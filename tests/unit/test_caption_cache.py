"""Captions are never paid for twice: CaptionCache (curate/captioning.py) with the caption stage in-process
(no Ray), a fingerprinting fake VLM that counts what it generates, and a tiny real CLIP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from curate.captioning import COLUMNS, MAX_PARTS, CaptionCache, merge_captions
from curate.storage import Output
from curate.tiny import write_tiny_clip
from stages.caption import Caption, CaptionConfig, RewriteConfig
from tests.fakes import FingerprintVLM
from tests.unit.test_caption import real_rows, table


def caption(cfg: CaptionConfig, out: Output, clips, model: FingerprintVLM):
    """What caption_step does, without Ray: reuse what the cache has, caption the rest, commit, merge."""
    cache = CaptionCache(out, cfg)
    clips, todo = cache.split(clips)
    if todo.num_rows:
        made = Caption(cfg, model)(todo).select(["clip_id", *COLUMNS])
        cache.save(made)
        clips = merge_captions(clips, made)
    return clips, cache


@pytest.fixture
def setup(videos, tiny_models, tmp_path):
    rows = [{**r, "clip_bytes": 1000 + i} for i, r in enumerate(real_rows(videos)[:4])]
    rows.append({"clip_id": "gone", "source_id": "s", "status": "filtered", "reason": "too_short", "clip_uri": None})
    # max_new_tokens >= 1000: the fake never truncates, so each clip is exactly one generated caption
    cfg = CaptionConfig(model=tiny_models["vlm"], clip_model=tiny_models["clip"], frames=2, frame_size=64, max_new_tokens=1000)
    return cfg, Output(str(tmp_path / "out")), table(rows)


def by_id(clips, col):
    return dict(zip(clips["clip_id"].to_pylist(), clips[col].to_pylist()))


def test_a_rerun_generates_nothing_and_gives_the_same_captions(setup):
    cfg, out, clips = setup
    model = FingerprintVLM()
    first, _ = caption(cfg, out, clips, model)
    assert sum(model.calls) == 4 and by_id(first, "caption")["gone"] is None
    again, cache = caption(cfg, out, clips, model)
    assert sum(model.calls) == 4  # nothing generated
    assert cache.reused == 4 and cache.rescored == 0
    assert again.select(["clip_id", *COLUMNS]).to_pylist() == first.select(["clip_id", *COLUMNS]).to_pylist()


def test_a_changed_setting_recaptions_what_it_affects(setup, tiny_models):
    cfg, out, clips = setup
    model = FingerprintVLM()
    first, _ = caption(cfg, out, clips, model)
    # another prompt, decoding or frame setting: every clip again
    lm = RewriteConfig(model=tiny_models["lm"], min_words=1, max_new_tokens=24)
    for change in ({"prompt": "What happens?"}, {"max_new_tokens": 1200}, {"frames": 3}, {"rewrite": lm}):
        n = sum(model.calls)
        caption(dataclasses.replace(cfg, **change), out, clips, model)
        assert sum(model.calls) == n + 4, change
    # back to the first settings: their captions are still there
    n = sum(model.calls)
    back, _ = caption(cfg, out, clips, model)
    assert sum(model.calls) == n and by_id(back, "caption") == by_id(first, "caption")
    # one clip's file changed: that clip only
    changed = clips.to_pylist()
    changed[1]["clip_bytes"] += 1
    caption(cfg, out, table(changed), model)
    assert sum(model.calls) == n + 1
    # execution settings do not change a caption
    caption(dataclasses.replace(cfg, batch_size=3, actors=2, device="cpu"), out, clips, model)
    assert sum(model.calls) == n + 1


def test_a_prompt_naming_a_column_recaptions_the_clips_whose_value_changed(setup):
    cfg, out, clips = setup
    cfg = dataclasses.replace(cfg, prompt="The camera is {motion_method}; aesthetic {aesthetic_score:.1f}. Describe the video.")
    rows = [{**r, "motion_method": "vectors", "aesthetic_score": 5.0} for r in clips.to_pylist()]
    model = FingerprintVLM()
    caption(cfg, out, table(rows), model)
    assert sum(model.calls) == 4
    rows[0]["aesthetic_score"] = 6.0  # rescored: its prompt reads otherwise
    rows[2]["aesthetic_score"] = 5.02  # the same prompt to one decimal
    caption(cfg, out, table(rows), model)
    assert sum(model.calls) == 5


def test_another_clip_model_rescores_without_generating(setup, tmp_path):
    cfg, out, clips = setup
    model = FingerprintVLM()
    first, _ = caption(cfg, out, clips, model)
    other = write_tiny_clip(str(tmp_path / "clip2"), seed=1)
    second, cache = caption(dataclasses.replace(cfg, clip_model=other), out, clips, model)
    assert sum(model.calls) == 4 and cache.rescored == 4
    kept = [c for c in by_id(first, "caption") if c != "gone"]
    assert {c: by_id(second, "caption")[c] for c in kept} == {c: by_id(first, "caption")[c] for c in kept}
    assert all(by_id(second, "caption_clip_model")[c] == f"{other} (random weights)" for c in kept)
    assert all(by_id(second, "caption_clip_score")[c] != by_id(first, "caption_clip_score")[c] for c in kept)
    # and without a CLIP: the same captions, no score, nothing generated
    third, _ = caption(dataclasses.replace(cfg, clip_model=None), out, clips, model)
    assert sum(model.calls) == 4 and all(by_id(third, "caption_clip_score")[c] is None for c in kept)
    assert all(by_id(third, "caption")[c] == by_id(first, "caption")[c] for c in kept)


def test_parts_stay_bounded(setup):
    cfg, out, clips = setup
    model = FingerprintVLM()
    for i in range(MAX_PARTS + 1):  # one part per run: a new seed each time
        caption(dataclasses.replace(cfg, seed=i, decoding="sample"), out, clips.slice(0, 1), model)

    def parts():
        return sorted(p.name for p in (Path(out.root) / "work" / "captions").glob("*.parquet"))

    assert len(parts()) == MAX_PARTS + 1
    n = sum(model.calls)
    caption(dataclasses.replace(cfg, seed=3, decoding="sample"), out, clips.slice(0, 1), model)  # folds the parts, reuses
    assert parts() == [f"part-{MAX_PARTS + 1:06d}-fold.parquet"] and sum(model.calls) == n
    caption(dataclasses.replace(cfg, seed=99, decoding="sample"), out, clips.slice(0, 1), model)  # a later part wins
    caption(dataclasses.replace(cfg, seed=5, decoding="sample"), out, clips.slice(0, 1), model)
    assert len(parts()) == 2 and sum(model.calls) == n + 1


def test_a_long_run_folds_its_own_parts(setup):
    cfg, out, clips = setup
    cache = CaptionCache(out, cfg)
    _, todo = cache.split(clips)
    made = Caption(cfg, FingerprintVLM())(todo).select(["clip_id", *COLUMNS])
    for i in range(MAX_PARTS + 3):  # one caption per commit, over and over
        cache.save(made.slice(i % made.num_rows, 1))
    names = sorted(p.name for p in (Path(out.root) / "work" / "captions").glob("*.parquet"))
    assert len(names) <= MAX_PARTS + 1 and any(n.endswith("-fold.parquet") for n in names)
    model = FingerprintVLM()
    caption(cfg, out, clips, model)  # every caption committed survived the folds
    assert sum(model.calls) == 0
