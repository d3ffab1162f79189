"""Captions are never paid for twice: the plan's caption step (curate/captioning.py `caption_step`) run by
its StepRunner in-process (no Ray) against the commit log, a fingerprinting fake VLM that counts what it
generates, and a tiny real CLIP."""

from __future__ import annotations

import dataclasses
import functools

import pyarrow as pa
import pytest

from curate.captioning import COLUMNS, caption_step
from curate.commit import CommitLog, run_stamp
from curate.plan import step_runners
from curate.storage import Output
from curate.tiny import write_tiny_clip
from stages.caption import CaptionConfig, RewriteConfig
from tests.fakes import FingerprintVLM
from tests.unit.test_caption import real_rows, table


class _Model:
    """A picklable factory handing the test's fake to the step's pool."""

    def __init__(self, model):
        self.model = model

    def __call__(self):
        return self.model


def caption(cfg: CaptionConfig, out: Output, clips, model: FingerprintVLM, batch_rows: int | None = None):
    """One run of the caption step without Ray: committed captions reused, the rest made and committed."""
    step = caption_step(cfg, make_model=_Model(model), two_pools=False)
    runners = step_runners(step, out.url, run_stamp())  # its lookup (apart: the model is an actor pool), then its pool
    n = batch_rows or clips.num_rows
    done = pa.concat_tables([functools.reduce(lambda b, r: r(b), runners, clips.slice(i, n)) for i in range(0, clips.num_rows, n)])
    order = {c: i for i, c in enumerate(clips["clip_id"].to_pylist())}
    return done.take(sorted(range(done.num_rows), key=lambda i: order[done["clip_id"][i].as_py()])), runners


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
    again, _ = caption(cfg, out, clips, model)
    assert sum(model.calls) == 4  # nothing generated
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
    second, _ = caption(dataclasses.replace(cfg, clip_model=other), out, clips, model)
    assert sum(model.calls) == 4
    kept = [c for c in by_id(first, "caption") if c != "gone"]
    assert {c: by_id(second, "caption")[c] for c in kept} == {c: by_id(first, "caption")[c] for c in kept}
    assert all(by_id(second, "caption_clip_model")[c] == f"{other} (random weights)" for c in kept)
    assert all(by_id(second, "caption_clip_score")[c] != by_id(first, "caption_clip_score")[c] for c in kept)
    # and without a CLIP: the same captions, no score, nothing generated
    third, _ = caption(dataclasses.replace(cfg, clip_model=None), out, clips, model)
    assert sum(model.calls) == 4 and all(by_id(third, "caption_clip_score")[c] is None for c in kept)
    assert all(by_id(third, "caption")[c] == by_id(first, "caption")[c] for c in kept)


def test_committed_parts_stay_bounded_and_survive_a_fold(setup):
    cfg, out, clips = setup
    model = FingerprintVLM()
    caption(cfg, out, clips, model, batch_rows=1)  # one part per clip
    log = CommitLog(out.url, "caption", caption_step(cfg, two_pools=False).key)
    assert len(log.parts()) == 4
    assert log.compact(min_parts=2) and len(log.parts()) == 1
    n = sum(model.calls)
    again, _ = caption(cfg, out, clips, model)  # every caption committed survived the fold
    assert sum(model.calls) == n and again["caption"].null_count == 1
    # a later run's caption of the same clip wins over an earlier one
    caption(dataclasses.replace(cfg, seed=1, decoding="sample"), out, clips.slice(0, 1), model)
    caption(dataclasses.replace(cfg, seed=2, decoding="sample"), out, clips.slice(0, 1), model)
    assert sum(model.calls) == n + 2
