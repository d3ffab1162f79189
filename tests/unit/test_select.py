"""The select predicate: cut at top-level ANDs, each condition judged, failing kept clips filtered."""

import pyarrow as pa
import pytest

from curate.config import ConfigError, from_dict, JobConfig
from curate.select import SelectConfig, apply_select, conditions, validate
from schemas import CLIPS


def test_conditions_split_only_at_top_level_and():
    assert conditions("motion_score >= 0.5 AND aesthetic_score >= 4.5 and watermark_score < 0.5") == [
        "motion_score >= 0.5", "aesthetic_score >= 4.5", "watermark_score < 0.5"]
    assert conditions("(motion_score > 1 and motion_score < 2) or license = 'a and b'") == [
        "(motion_score > 1 and motion_score < 2) or license = 'a and b'"]
    assert conditions("motion_score between 0.5 and 2 and watermark_score < 0.5") == [
        "motion_score between 0.5 and 2", "watermark_score < 0.5"]
    assert conditions("brand = 'x' and band > 1") == ["brand = 'x'", "band > 1"]


def _clips(rows):
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in CLIPS} for r in rows], schema=CLIPS)


def test_failing_kept_clips_are_filtered_with_the_failed_conditions():
    clips = _clips([
        {"clip_id": "a", "source_id": "s", "status": "kept", "motion_score": 1.0, "watermark_score": 0.1},
        {"clip_id": "b", "source_id": "s", "status": "kept", "motion_score": 0.1, "watermark_score": 0.1},
        {"clip_id": "c", "source_id": "s", "status": "kept", "motion_score": 0.1, "watermark_score": 0.9},
        {"clip_id": "d", "source_id": "s", "status": "kept", "motion_score": None, "watermark_score": 0.1},
        {"clip_id": "e", "source_id": "s", "status": "filtered", "reason": "too_short", "motion_score": None},
    ])
    out = apply_select(clips, "motion_score >= 0.5 and watermark_score < 0.5")
    got = {r["clip_id"]: (r["status"], r["reason"]) for r in out.to_pylist()}
    assert got == {
        "a": ("kept", None),
        "b": ("filtered", "select: motion_score >= 0.5"),
        "c": ("filtered", "select: motion_score >= 0.5 and watermark_score < 0.5"),
        "d": ("filtered", "select: motion_score >= 0.5"),  # no score: the condition is not true
        "e": ("filtered", "too_short"),
    }
    assert out["motion_score"].to_pylist() == clips["motion_score"].to_pylist()  # scores stay
    assert apply_select(clips, None).equals(clips)


def test_bad_predicates_are_config_errors_naming_the_problem():
    with pytest.raises(ValueError, match="nope_score"):
        validate("nope_score > 1")
    with pytest.raises(ConfigError, match="select"):
        from_dict(JobConfig, {"output": "/tmp/x", "input": {"dir": "/tmp"}, "select": {"where": "motion_score >>> 1"}})
    assert SelectConfig("motion_score > 0").where == "motion_score > 0"


def test_conditions_on_caption_columns_wait_for_the_captions():
    from curate.select import split_where

    before, after = split_where("motion_score >= 0.5 and caption_clip_score > 0.2 and (watermark_score < 0.5 or aesthetic_score > 5)")
    assert before == "motion_score >= 0.5 and (watermark_score < 0.5 or aesthetic_score > 5)"
    assert after == "caption_clip_score > 0.2"
    assert split_where(None) == (None, None) and split_where("motion_score > 1") == ("motion_score > 1", None)


def test_score_cache_is_keyed_by_settings_and_scoring_code(tmp_path, monkeypatch):
    """Cached scores are reused only under the same scorer settings, SCORE_RULES and watermark constants."""
    from pathlib import Path

    import curate.score as score
    from curate.config import load_job

    demo = str(Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml")

    def keys(*overrides):
        return {name: key for name, _pool, _cols, key in score.score_pools(load_job(demo, list(overrides)))}

    base = keys()
    assert set(base) == {"motion", "watermark", "text_nsfw", "aesthetic"} and keys() == base
    changed = keys("watermark.persist=0.7")  # one scorer's settings: that scorer's key only
    assert changed["watermark"] != base["watermark"] and {k: v for k, v in changed.items() if k != "watermark"} == {k: v for k, v in base.items() if k != "watermark"}
    monkeypatch.setattr(score, "WEIGHTS", tuple(w + 1 for w in score.WEIGHTS))
    assert keys()["watermark"] != base["watermark"]
    monkeypatch.undo()
    monkeypatch.setattr(score, "SCORE_RULES", score.SCORE_RULES + 1)
    assert all(keys()[k] != base[k] for k in base)
    monkeypatch.undo()
    # The watermark step reads the text scorer's static words: it runs after it and its key follows the
    # text settings; without words (or without the text scorer) it runs before, on its own settings.
    order = lambda *o: [name for name, *_ in score.score_pools(load_job(demo, list(o)))]  # noqa: E731
    assert order() == ["motion", "text_nsfw", "watermark", "aesthetic"]
    assert keys("text.frames=6")["watermark"] != base["watermark"]
    assert order("watermark.words=false") == ["motion", "watermark", "text_nsfw", "aesthetic"]
    assert order("text=null") == ["motion", "watermark", "text_nsfw", "aesthetic"]
    assert keys("watermark.words=false", "text.frames=6")["watermark"] == keys("watermark.words=false")["watermark"]
