"""Caption step without Ray: caption checks on crafted outputs, the retry, the ordering proof with a
fingerprinting fake model, and a tiny real-class VLM (transformers Qwen2-VL) captioning real clips."""

from __future__ import annotations

import dataclasses
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
    WeightsError,
    check_caption,
    fingerprint,
    is_repetitive,
    retry_decoding,
    sample_frames,
)
from tests.conftest import VIDEOS
from tests.fakes import FingerprintVLM

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


def test_ordering_proof_shuffled_uneven_batches(videos):
    """Every caption lands on the clip it describes, through shuffling, uneven batches, length sorting and retries."""
    cfg = CaptionConfig(frames=3, frame_size=64, batch_size=3, max_new_tokens=600)
    rows = real_rows(videos)
    want = expected_fingerprints(rows, cfg)
    assert len(set(want.values())) == len(rows)  # the proof needs distinct frames per clip
    model = FingerprintVLM()
    stage = Caption(cfg, model)
    rng = random.Random(7)
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
            got.update(zip(out["clip_id"].to_pylist(), out["caption"].to_pylist()))
            start += n
        assert got == {cid: f"frames {fp} seen by the model." for cid, fp in want.items()}
    retried = [fp for fp in want.values() if fp[0] in "012345"]
    assert retried and len(retried) < len(want)  # both paths (first try, retry) were exercised
    assert len(set(model.calls)) > 1  # uneven generation batches


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
