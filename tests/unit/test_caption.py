"""Caption step without Ray: caption checks on crafted outputs, the retry, the ordering proof with a
fingerprinting fake model, and a tiny real-class VLM (transformers Qwen2-VL) captioning real clips."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pyarrow as pa
import pytest

from schemas import CLIPS, CaptionReason, CaptionStatus
from stages.caption import (
    Caption,
    CaptionConfig,
    Decoding,
    Generated,
    RewriteConfig,
    WeightsError,
    check_caption,
    fingerprint,
    is_repetitive,
    parse_structured,
    retry_decoding,
    sample_frames,
    structured_prose,
)
from tests.conftest import VIDEOS
from tests.fakes import EchoRewriter, FingerprintVLM, structured_answer

# (clip file under ../shared/data/videos, end_frame): the same file with another frame count samples other frames
REAL = [("bikes.mp4", 250), ("bikes.mp4", 40), ("counter.mp4", 30), ("counter.mp4", 12), ("vtest.avi", 60),
        ("vtest.avi", 25), ("goldeneye-vfr-drop3.mp4", 50), ("bigbuckbunny.mp4", 20), ("issue-134-rotate.mp4", 20),
        ("delayed_start.mp4", 20), ("traffic_camera.mp4", 20)]  # fmt: skip


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in CLIPS} for r in rows], schema=CLIPS)


def real_rows(videos) -> list[dict]:
    return [{"clip_id": f"{name}:{n}", "source_id": "s", "status": "kept", "clip_uri": str(videos / name),
             "start_frame": 0, "end_frame": n} for name, n in REAL]  # fmt: skip


# ------------------------------------------------------------------------------------------- checks

GOOD = [
    "A man in a red jacket rides a bicycle along a wet street while cars pass behind him.",
    "Two people talk in a kitchen; one pours coffee into a white cup. Soft morning light.",
    "A shop sign reads 'sorry, we are closed' as the camera pans slowly to the left.",
    "Waves roll onto a beach, then the view cuts to a lighthouse... at dusk.",
]
BAD = [
    ("", CaptionReason.EMPTY),
    ("  . , !  ", CaptionReason.EMPTY),
    ("I'm sorry, but I can't help with identifying people in this video.", CaptionReason.REFUSAL),
    ("Sorry, I cannot describe this video.", CaptionReason.REFUSAL),
    ("As an AI, I am unable to view videos.", CaptionReason.REFUSAL),
    ("The video shows that I cannot describe the content of the frames.", CaptionReason.REFUSAL),
    ("A cat sits on a mat and a cat sits on a mat and a cat sits on a mat and", CaptionReason.REPETITIVE),
    ("A dog runs runs runs runs across the field.", CaptionReason.REPETITIVE),
    ("the camera moves to the left the camera moves to the right the camera moves to the left the camera moves up",
     CaptionReason.REPETITIVE),
    ("hahahahahahahahahahaha", CaptionReason.REPETITIVE),
]


@pytest.mark.parametrize("text", GOOD)
def test_good_captions_pass(text):
    assert check_caption(Generated(text, 20, True), 128) is None


@pytest.mark.parametrize("text,reason", BAD)
def test_bad_captions_fail_with_their_reason(text, reason):
    assert check_caption(Generated(text, 20, True), 128) == reason


def test_cut_off_at_the_token_limit_is_truncated_only_without_an_end():
    text = "A woman walks through a market, looking at the fruit stalls and the"
    assert check_caption(Generated(text, 32, False), 32) == CaptionReason.TRUNCATED
    assert check_caption(Generated(text, 32, True), 32) is None  # ended exactly at the limit
    assert check_caption(Generated(text, 20, False), 32) is None  # stopped early for another reason


def test_repetition_needs_a_loop_not_a_repeated_word():
    assert not is_repetitive("The red car passes the blue car near the old car park.")
    assert is_repetitive("very very very very good")
    assert not is_repetitive("very very very good")


def test_retry_settings_adjust_to_the_reason():
    d = Decoding.of(CaptionConfig(max_new_tokens=64))
    assert d.do_sample is False
    assert retry_decoding(d, CaptionReason.TRUNCATED).max_new_tokens == 128
    loop = retry_decoding(d, CaptionReason.REPETITIVE)
    assert loop.repetition_penalty > 1.0 and loop.do_sample and loop.seed != d.seed
    assert retry_decoding(d, CaptionReason.REFUSAL).do_sample


class Scripted:
    """Returns the scripted captions in order, whatever the clip; records the decoding of each call."""

    name = "scripted"

    def __init__(self, *texts: tuple[str, int, bool]):
        self.texts = list(texts)
        self.decodings: list[Decoding] = []

    def prepare(self, frames, prompt):
        return {"input_ids": np.zeros((1, 4), np.int64)}

    def generate(self, items, decoding):
        self.decodings.append(decoding)
        return [Generated(*self.texts.pop(0)) for _ in items]


def _one(videos):
    return table([real_rows(videos)[2]])


def test_a_failed_check_is_retried_once_with_adjusted_settings(videos):
    model = Scripted(("a red car and the", 16, False), ("A red car drives away.", 6, True))
    row = Caption(CaptionConfig(max_new_tokens=16), model)(_one(videos)).to_pylist()[0]
    assert [d.max_new_tokens for d in model.decodings] == [16, 32]
    assert row["caption"] == "A red car drives away."
    assert (row["caption_status"], row["caption_reason"], row["caption_attempts"]) == (CaptionStatus.OK, "truncated", 2)
    assert row["caption_tokens"] == 6 and row["caption_model"] == "scripted" and row["caption_style"] == "short"


def test_two_failures_leave_no_caption_and_say_why(videos):
    model = Scripted(("I'm sorry, I can't.", 5, True), ("Sorry, I cannot help.", 5, True))
    row = Caption(CaptionConfig(), model)(_one(videos)).to_pylist()[0]
    assert row["caption"] is None and row["status"] == "kept"  # a caption failure never drops the clip
    assert (row["caption_status"], row["caption_reason"], row["caption_attempts"]) == (CaptionStatus.FAILED, "refusal", 2)


def test_without_retry_one_attempt(videos):
    model = Scripted(("", 0, True))
    row = Caption(CaptionConfig(retry=False), model)(_one(videos)).to_pylist()[0]
    assert len(model.decodings) == 1 and row["caption_status"] == CaptionStatus.FAILED and row["caption_attempts"] == 1


def test_unreadable_clip_and_rows_not_kept(videos, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    rows = [
        {"clip_id": "bad", "source_id": "s", "status": "kept", "clip_uri": str(bad), "start_frame": 0, "end_frame": 10},
        {"clip_id": "gone", "source_id": "s", "status": "filtered", "reason": "too_short", "clip_uri": None},
        {**real_rows(videos)[2], "clip_id": "ok"},
    ]
    out = Caption(CaptionConfig(), FingerprintVLM())(table(rows)).to_pylist()
    assert [r["clip_id"] for r in out] == ["bad", "gone", "ok"]
    assert (out[0]["caption_status"], out[0]["caption_reason"], out[0]["status"]) == ("failed", "decode_error", "kept")
    assert out[1]["caption_status"] is None and out[1]["caption"] is None and out[1]["status"] == "filtered"
    assert out[2]["caption_status"] == "ok"


# ------------------------------------------------------------------------------------------- ordering proof


def expected_fingerprints(rows: list[dict], cfg: CaptionConfig) -> dict[str, str]:
    """What each clip's caption must carry: the fingerprint of its own frames, decoded here independently."""
    return {r["clip_id"]: fingerprint(sample_frames(r["clip_uri"], cfg.frames, cfg.frame_size, r["end_frame"])) for r in rows}


@pytest.mark.parametrize("style", ["short", "structured", "rewrite"])
def test_ordering_proof_shuffled_uneven_batches(videos, style):
    """Every caption lands on the clip it describes, through shuffling, uneven batches, length sorting and
    retries (of the VLM and, with a rewrite pass, of the rewriter)."""
    rewrite = RewriteConfig(model="fake", max_new_tokens=600, batch_size=2, min_words=1) if style == "rewrite" else None
    cfg = CaptionConfig(frames=3, frame_size=64, batch_size=3, max_new_tokens=600,
                        style="short" if style == "rewrite" else style, rewrite=rewrite)  # fmt: skip
    rows = real_rows(videos)
    want = expected_fingerprints(rows, cfg)
    assert len(set(want.values())) == len(rows)  # the proof needs distinct frames per clip
    model, rewriter = FingerprintVLM(), EchoRewriter()
    stage = Caption(cfg, model, rewriter=rewriter if rewrite else None)
    rng = random.Random(7)
    raw = {}
    for trial in range(3):
        rng.shuffle(rows)
        sizes, i = [], 0
        while i < len(rows):
            sizes.append(rng.choice([1, 2, 4, 5]))
            i += sizes[-1]
        got = {}
        start = 0
        for n in sizes:
            out = stage(table(rows[start : start + n]))
            assert out["clip_id"].to_pylist() == [r["clip_id"] for r in rows[start : start + n]]
            column = "caption_json" if style == "structured" else "caption"
            got.update(zip(out["clip_id"].to_pylist(), out[column].to_pylist()))
            raw.update(zip(out["clip_id"].to_pylist(), out["caption_raw"].to_pylist()))
            start += n
        if style == "structured":  # the JSON of each clip's own frames, and the prose made from it
            assert {c: json.loads(j) for c, j in got.items()} == {cid: structured_answer(fp) for cid, fp in want.items()}
        elif style == "rewrite":  # the rewrite of each clip's own caption, the VLM's kept beside it
            assert got == {cid: f"Rewritten: frames {fp} seen by the model." for cid, fp in want.items()}
            assert raw == {cid: f"frames {fp} seen by the model." for cid, fp in want.items()}
        else:
            assert got == {cid: f"frames {fp} seen by the model." for cid, fp in want.items()}
    retried = [fp for fp in want.values() if fp[0] in "012345"]
    assert retried and len(retried) < len(want)  # both paths (first try, retry) were exercised
    assert len(set(model.calls)) > 1  # uneven generation batches
    if rewrite:
        assert 0 < len([fp for fp in want.values() if fp[0] in "0123"]) < len(want) and len(set(rewriter.calls)) > 1


# ------------------------------------------------------------------------------------------- structured


ANSWER = {"subjects": ["a man in a red jacket"], "actions": ["rides a bicycle", "waves"], "setting": "a wet street",
          "camera": "slow pan left", "lighting": "overcast daylight", "style": "live action", "on_screen_text": ["OPEN"]}  # fmt: skip


def test_structured_answers_are_validated_and_normalised():
    assert parse_structured(json.dumps(ANSWER)) == ANSWER
    assert parse_structured("```json\n" + json.dumps(ANSWER) + "\n```") == ANSWER  # a fenced block
    assert parse_structured(json.dumps({**ANSWER, "subjects": "a dog", "on_screen_text": None}))["subjects"] == ["a dog"]
    for bad in ("A man rides a bike.", json.dumps([ANSWER]), json.dumps({**ANSWER, "mood": "calm"}),
                json.dumps({k: v for k, v in ANSWER.items() if k != "camera"}), json.dumps({**ANSWER, "camera": ["pan"]}),
                json.dumps({**ANSWER, "actions": [1, 2]}), json.dumps({**ANSWER, "subjects": [], "actions": []}),
                json.dumps(ANSWER)[:-1]):  # fmt: skip
        assert parse_structured(bad) is None, bad
    assert structured_prose(ANSWER) == ('a man in a red jacket: rides a bicycle; waves. Setting: a wet street. Camera: slow pan left. '
                                        'Lighting: overcast daylight. Style: live action. On-screen text: "OPEN".')  # fmt: skip


def test_a_structured_answer_not_in_shape_is_retried_and_stored_as_json(videos):
    model = Scripted(("Sure! Here is the description: a man on a bike.", 12, True), (json.dumps(ANSWER), 40, True))
    row = Caption(CaptionConfig(style="structured"), model)(_one(videos)).to_pylist()[0]
    assert (row["caption_status"], row["caption_reason"], row["caption_attempts"]) == ("ok", "invalid_json", 2)
    assert json.loads(row["caption_json"]) == ANSWER and row["caption"] == structured_prose(ANSWER)
    assert row["caption_style"] == "structured" and model.decodings[1].do_sample  # the retry samples
    model = Scripted(("{}", 2, True), ('{"subjects": 3}', 5, True))
    row = Caption(CaptionConfig(style="structured"), model)(_one(videos)).to_pylist()[0]
    assert (row["caption_status"], row["caption_reason"], row["caption"], row["caption_json"]) == ("failed", "invalid_json", None, None)
    # a refusal inside the right shape is still a refusal
    refusal = {**ANSWER, "subjects": ["I'm sorry, I can't describe people"], "actions": []}
    model = Scripted((json.dumps(refusal), 20, True), (json.dumps(refusal), 20, True))
    row = Caption(CaptionConfig(style="structured"), model)(_one(videos)).to_pylist()[0]
    assert (row["caption_status"], row["caption_reason"]) == ("failed", "refusal")


def test_tiny_qwen2vl_structured_goes_through_the_real_class(videos, tiny_models):
    cfg = CaptionConfig(model=tiny_models["vlm"], style="structured", frames=2, frame_size=112, max_new_tokens=16)
    out = Caption(cfg)(table(real_rows(videos)[:2])).to_pylist()
    for r in out:  # random weights never write the JSON shape: failed after the retry, the clip kept
        assert (r["caption_status"], r["caption_attempts"], r["status"]) == ("failed", 2, "kept")
        assert r["caption_reason"] in ("invalid_json", "truncated") and r["caption_json"] is None


def test_a_prompt_fills_in_the_clips_own_columns(videos):
    class Recording(Scripted):
        def prepare(self, frames, prompt):
            self.prompts.append(prompt)
            return super().prepare(frames, prompt)

    model = Recording(("A dog.", 3, True), ("A cat.", 3, True))
    model.prompts = []
    rows = [{**r, "motion_score": m, "motion_method": "vectors"} for r, m in zip(real_rows(videos)[:2], (0.4567, None))]
    Caption(CaptionConfig(prompt="Motion {motion_score:.2f} ({motion_method}). Describe the video."), model)(table(rows))
    assert model.prompts == ["Motion 0.46 (vectors). Describe the video.", "Motion unknown (vectors). Describe the video."]
    with pytest.raises(ValueError, match="not a clips column"):
        CaptionConfig(prompt="Describe {colour}.")


# ------------------------------------------------------------------------------------------- rewrite


class ScriptedRewriter:
    name = "scripted-rewriter"

    def __init__(self, *texts):
        self.texts, self.decodings = list(texts), []

    def generate(self, prompts, decoding):
        self.decodings.append(decoding)
        return [Generated(*self.texts.pop(0)) for _ in prompts]


def test_a_rewrite_outside_its_length_band_is_retried_then_the_vlm_caption_stays(videos):
    cfg = CaptionConfig(rewrite=RewriteConfig(model="fake", min_words=3, max_words=8))
    rewriter = ScriptedRewriter(("Too short.", 3, True), ("A red car drives away down the street.", 9, True))
    row = Caption(cfg, Scripted(("A red car drives away.", 6, True)), rewriter=rewriter)(_one(videos)).to_pylist()[0]
    assert (row["caption"], row["caption_raw"]) == ("A red car drives away down the street.", "A red car drives away.")
    assert row["caption_rewrite_model"] == "scripted-rewriter" and rewriter.decodings[1].do_sample  # the retry samples
    rewriter = ScriptedRewriter(("Sorry, I cannot help with that request.", 8, True), ("one two three four five six seven eight nine", 9, True))
    row = Caption(cfg, Scripted(("A red car drives away.", 6, True)), rewriter=rewriter)(_one(videos)).to_pylist()[0]
    assert (row["caption"], row["caption_raw"], row["caption_rewrite_model"]) == ("A red car drives away.", "A red car drives away.", None)
    assert row["caption_status"] == "ok"  # a failed rewrite keeps the VLM's caption


def test_tiny_rewrite_lm_goes_through_the_real_class(videos, tiny_models):
    cfg = CaptionConfig(model=tiny_models["vlm"], frames=2, frame_size=112, max_new_tokens=16,
                        rewrite=RewriteConfig(model=tiny_models["lm"], min_words=1, max_new_tokens=24))  # fmt: skip
    out = Caption(cfg)(table(real_rows(videos)[:3])).to_pylist()
    ok = [r for r in out if r["caption_status"] == "ok"]
    assert ok
    for r in ok:
        assert r["caption_raw"] and r["caption_rewrite_model"] == f"{tiny_models['lm']} (random weights)"
        assert r["caption"] != r["caption_raw"]


# ------------------------------------------------------------------------------------------- a real class


def test_tiny_qwen2vl_captions_real_clips(videos, tiny_models):
    cfg = CaptionConfig(model=tiny_models["vlm"], clip_model=tiny_models["clip"], frames=4, frame_size=224,
                        max_new_tokens=24, batch_size=4)  # fmt: skip
    rows = real_rows(videos)[:5]
    out = Caption(cfg)(table(rows)).to_pylist()
    for r in out:
        assert r["caption_model"] == f"{tiny_models['vlm']} (random weights)"
        assert r["caption_status"] in ("ok", "failed") and 1 <= r["caption_attempts"] <= 2
        assert 0 < r["caption_tokens"] <= 48
    ok = [r for r in out if r["caption_status"] == "ok"]
    assert len(ok) >= 4  # the tiny model ends captions early by design (curate/tiny.py)
    for r in ok:
        assert r["caption"] and -1.0 <= r["caption_clip_score"] <= 1.0
        assert r["caption_clip_model"] == f"{tiny_models['clip']} (random weights)"


def test_tiny_qwen2vl_sampling_is_seeded(videos, tiny_models):
    cfg = CaptionConfig(model=tiny_models["vlm"], frames=2, frame_size=112, max_new_tokens=8, decoding="sample",
                        retry=False, temperature=1.5)  # fmt: skip
    rows = table(real_rows(videos)[:3])
    a = Caption(cfg)(rows)["caption"].to_pylist()
    assert Caption(cfg)(rows)["caption"].to_pylist() == a
    others = [Caption(dataclasses.replace(cfg, seed=s))(rows)["caption"].to_pylist() for s in (1, 2)]
    assert any(o != a for o in others)


def test_a_hub_model_not_downloaded_stops_with_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct --revision"):
        CaptionConfig().check()
    with pytest.raises(WeightsError, match="no such folder"):
        CaptionConfig(model=str(tmp_path / "missing")).check()
    with pytest.raises(WeightsError, match="clip_weights"):
        CaptionConfig(model=str(tmp_path), clip_model="ViT-L-14").check()


def test_make_tiny_command_writes_marked_models(tmp_path, capsys):
    from curate.cli import main
    from stages.caption import ClipAlignment, is_random

    assert main(["models", "make-tiny", str(tmp_path), "--only", "clip"]) == 0
    assert capsys.readouterr().out.split() == ["clip", str(tmp_path / "clip")]
    assert is_random(str(tmp_path / "clip")) and not (tmp_path / "vlm").exists()
    clip = ClipAlignment(CaptionConfig(clip_model=str(tmp_path / "clip")))
    frames = [sample_frames(str(VIDEOS / "counter.mp4"), 2, 64, 30)]
    assert -1.0 <= clip(frames, ["a counter"])[0] <= 1.0 and clip.name.endswith("(random weights)")


def test_caption_keys_in_a_job_are_checked():
    from curate.config import ConfigError, JobConfig, from_dict

    base = {"output": "/tmp/x", "input": {"dir": "/tmp"}}
    assert from_dict(JobConfig, base).caption is None
    cfg = from_dict(JobConfig, {**base, "caption": {"style": "detailed", "max_new_tokens": 256}}).caption
    assert cfg.style_name == "detailed" and "camera" in cfg.text and cfg.max_new_tokens == 256
    with pytest.raises(ConfigError, match="caption.frmes: unknown key"):
        from_dict(JobConfig, {**base, "caption": {"frmes": 4}})
    with pytest.raises(ConfigError, match="caption.style: expected one of"):
        from_dict(JobConfig, {**base, "caption": {"style": "long"}})
    with pytest.raises(ConfigError, match="frames must be >= 1"):
        from_dict(JobConfig, {**base, "caption": {"frames": 0}})


@pytest.mark.gpu
def test_tiny_qwen2vl_on_gpu_in_bfloat16(videos, tiny_models):
    cfg = CaptionConfig(model=tiny_models["vlm"], clip_model=tiny_models["clip"], frames=4, frame_size=224, device="cuda")
    stage = Caption(cfg)
    out = stage(table(real_rows(videos)[:4])).to_pylist()
    import torch

    assert next(stage.model.model.parameters()).dtype == torch.bfloat16
    assert all(r["caption_status"] in ("ok", "failed") for r in out) and any(r["caption"] for r in out)


def test_camera_hint_puts_the_clip_camera_motion_into_the_prompt(videos):
    class Recording(Scripted):
        prompts: list[str] = []

        def prepare(self, frames, prompt):
            self.prompts.append(prompt)
            return super().prepare(frames, prompt)

    rows = [{**real_rows(videos)[2], "clip_id": c, "camera_motion": m} for c, m in [("a", "pan_left"), ("b", "complex"), ("c", None)]]
    model = Recording(*[("A red car drives away.", 6, True)] * 3)
    Caption(CaptionConfig(camera_hint=True), model)(table(rows))
    base = CaptionConfig().text
    assert model.prompts == [f"{base} The camera pans left.", base, base]
    model.prompts.clear()
    Caption(CaptionConfig(), Recording(("A car.", 3, True)))(table(rows[:1]))
    assert Recording.prompts == [base]  # off by default
