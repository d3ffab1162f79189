"""Watermark scores on overlay pairs made from the real videos (the same segment with and without an
overlay burned in by ffmpeg: a filled box, an outline, a PNG logo, drawtext; varied position, size,
colour and opacity): overlaid clips must rank above clean ones and the box must land on the overlay.
`python -m curate.bench.watermark` runs the full sets (42 pairs each of seeds 1, 2 and 3; --lovo adds
leave-one-video-out) and prints their AUC."""

import pytest

from curate.bench.watermark import auc, iou, make_pairs, score_file
from stages.watermark import WatermarkConfig


@pytest.fixture(scope="session")
def pairs(videos, tmp_path_factory):
    """Seed 2 (the detector was fitted on seed 0): 14 pairs, one per segment,
    so every segment (static cameras, a still screen, a fade) is there once."""
    return make_pairs(str(videos), str(tmp_path_factory.mktemp("wm-pairs")), 14, seed=2)


def test_overlaid_clips_rank_above_clean_ones(pairs):
    cfg = WatermarkConfig(method="edges")
    clean = [score_file(c, cfg) for c, _, _ in pairs]
    marked = [score_file(m, cfg) for _, m, _ in pairs]
    cs, ms = [r.score for r in clean], [r.score for r in marked]
    # Measured: AUC 1.000 on these 14 (the bench: 0.969, 0.961 and 0.971 on seeds 1, 2 and 3, 42 pairs
    # each; 0.963 leave-one-video-out over 154 pairs; the target: 0.95).
    assert auc(ms, cs) >= 0.92, (ms, cs)
    # 0.5 is a working threshold (fitted on seed 0): clean clips stay below it, most overlays go above
    # (measured: 0/14 clean, 12/14 overlaid).
    assert sum(c >= 0.5 for c in cs) <= 1 and sum(m >= 0.5 for m in ms) >= 8, (ms, cs)
    # Opaque enough to see (opacity >= 0.7): the overlaid copy scores above its clean twin.
    strong = [(m, c, b) for m, c, (_, _, b) in zip(ms, cs, pairs) if b["opacity"] >= 0.7]
    assert strong and sum(m > c for m, c, _ in strong) >= len(strong) - 1, strong
    # The box lands on the overlay in most pairs.
    hits = sum(iou(r.box, b) >= 0.3 for r, (_, _, b) in zip(marked, pairs))
    assert hits >= len(pairs) // 2 + 1, [(r.box, b) for r, (_, _, b) in zip(marked, pairs)]


def test_image_library_overlays_made_as_uploads_are(videos, tmp_path):
    """The style families the detector was not built on (issue 17): antialiased TrueType words with
    alpha, words on a rounded translucent plate, wordless emblems, each composited at crf 20 and
    encoded again as the split does. On a moving picture (bikes.mp4's shots) the overlaid copy scores
    above its clean twin and no clean clip reaches the templates' threshold.
    `python -m curate.bench.watermark --styles --loso` runs 14 pairs a style on every segment."""
    from curate.bench.watermark import make_style_pairs, render_overlay

    import random

    import numpy as np

    emblem = np.asarray(render_overlay("emblem", 64, 64, random.Random(0)))
    alpha = emblem[..., 3]
    # A ring around a shape: drawn pixels at the rim and the centre, nothing in the corners, and
    # antialiased edges (partly covered pixels) as an exported PNG has.
    assert alpha[:6, :6].max() == 0 and alpha[32, 32] > 0 and ((alpha > 0) & (alpha < 255)).sum() > 50
    pairs = make_style_pairs(str(videos), str(tmp_path), styles=("pil_text", "pil_plate", "emblem"), per_style=3, seed=5)
    assert {b["kind"] for _, _, b in pairs} == {"pil_text", "pil_plate", "emblem"}
    cfg = WatermarkConfig(method="edges")
    cs = [score_file(c, cfg).score for c, _, _ in pairs]
    ms = [score_file(m, cfg).score for _, m, _ in pairs]
    # Measured: clean 0-0.26; overlaid 0-0.996, above the clean twin in 8/9 (a pil_text at opacity 0.37 scores 0).
    assert max(cs) < 0.5, cs
    assert sum(m > c for m, c in zip(ms, cs)) >= len(pairs) - 1, (ms, cs)


def test_static_words_read_by_the_text_scorer_count_as_an_overlay(videos, tmp_path):
    """As a job with both sections runs them: the text scorer first, then the watermark step reading
    its columns. Words an image library drew over real footage, at the same place in every frame, make
    the clip an overlay even where the edges miss them (antialiased, scaled down); the clean twins (the
    same shots, bikes.mp4 and the other segments, with their own filmed text) stay below 0.5."""
    import pyarrow as pa

    from curate.bench.watermark import make_style_pairs
    from schemas import CLIPS, conform
    from stages.text import ScoreText, TextConfig
    from stages.watermark import ScoreWatermark

    pairs = make_style_pairs(str(videos), str(tmp_path), styles=("pil_text", "pil_plate"), per_style=4, seed=9)
    rows = [{"clip_id": f"{i}", "source_id": b["source"], "clip_uri": p, "status": "kept"}
            for i, (c, m, b) in enumerate(pairs) for p in (c, m)]
    table = ScoreText(TextConfig())(conform(pa.Table.from_pylist(rows), CLIPS))
    both = ScoreWatermark(WatermarkConfig(method="edges", mean_words=False))(table).to_pylist()
    edges = ScoreWatermark(WatermarkConfig(method="edges", words=False, mean_words=False))(table).to_pylist()
    cs, ms = [r["watermark_score"] for r in both[0::2]], [r["watermark_score"] for r in both[1::2]]
    ecs, ems = [r["watermark_score"] for r in edges[0::2]], [r["watermark_score"] for r in edges[1::2]]
    statics = [r["text_static"] for r in both[1::2]]
    # Measured (seed 9, bikes.mp4's shots): clean 0-0.26 either way; overlaid, edges alone 4/8 at 0.5
    # (0.0, 0.99, 0.21, 0.20, 0.98, 1.0, 0.97, 0.30), with the static words 5/8: the plate at 0.30 has
    # text_static 1.0 and goes to 1.0; the three still missed were not read as static words.
    assert max(cs) < 0.5 and cs == ecs, (cs, ecs)  # clean clips: no static words, the edges' score unchanged
    # Overlaid: the score is the edges' raised to what the static words say, where they say anything; the
    # words are read as static on some (which ones the edges already catch depends on the fonts installed:
    # the pairs draw from those there).
    from stages.watermark import words_score

    said = [words_score(r["text_static"], r["text_area"], WatermarkConfig()) for r in both[1::2]]
    assert sum(x is not None for x in said) >= 2, statics
    assert all(m == max(e, x or 0.0) for m, e, x in zip(ms, ems, said)), (ms, ems, said)


def test_words_on_the_mean_frame_are_read_on_overlays_and_on_no_clean_clip(videos, tmp_path):
    """The mean of the 16 sampled frames read by the text scorer's PP-OCR: ffmpeg-drawn words over
    every one of the bench's 14 segments (seed 9, opacity 0.3-0.9, 8-22 % of the width, encoded twice)
    against the same segments clean, among them the filmed computer screen (goldeneye-vfr-drop3.mp4 and
    issue-134-rotate.mp4: 5-9 lines of rendered UI, and a line being typed) and fixed cameras."""
    from curate.bench.watermark import make_style_pairs
    from stages.watermark import mean_words, mean_words_model, sample_yuv

    pairs = make_style_pairs(str(videos), str(tmp_path), styles=("text",), per_style=14, seed=9)
    cfg = WatermarkConfig()
    ocr = mean_words_model(cfg)

    def read(path):
        frames, chroma, w, h = sample_yuv(path, cfg.frames, cfg.width)
        return mean_words(frames, chroma, ocr, cfg, w, h)

    clean = [read(c) for c, _, _ in pairs]
    marked = [read(m) for _, m, _ in pairs]
    assert all(c is None for c in clean), [(b["source"], c) for c, (_, _, b) in zip(clean, pairs)]
    # Measured: here 10 of 14 overlays read (bikes 4 of 4, Big Buck Bunny, testvideo, carphone, vtest,
    # traffic_camera 2 of 2; the mean frame read at 480 instead of mean_words_size's 960: 7), box IoU
    # 0.26-0.78, >= 0.3 on 8 (PP-OCR pads its boxes by about the line's height: the smallest lines,
    # carphone's 176x144 and a 35x14 line, 0.29 and 0.26); none of goldeneye's and the rotated copy's
    # screens of rendered UI, nor delayed_start's fade. No clean clip read.
    found = [(r, b) for r, (_, _, b) in zip(marked, pairs) if r is not None]
    assert len(found) >= 8, [(b["source"], b["opacity"], r) for r, (_, _, b) in zip(marked, pairs)]
    assert all(iou(r.box, b) >= 0.2 for r, b in found) and sum(iou(r.box, b) >= 0.3 for r, b in found) >= len(found) - 3, found  # the line's box


def test_small_words_over_a_fixed_camera_are_read_on_the_mean_frame_scaled_up(videos, tmp_path):
    """A channel name 32 pixels tall, black at opacity 0.7 over the road of traffic_camera.mp4 (a fixed
    camera: no motion tells it from the picture), encoded twice as a clip is: read on the mean frame
    scaled to mean_words_size (960, twice the sampled frames' 480), with its box. At 480 PP-OCR's
    detector finds nothing there (measured at 24, 32 and 40 pixels, "TV1" and "NEWS": 960 read 6 of 6,
    480 1 of 6). The clean twin: nothing read at either."""
    import subprocess

    from curate.bench.watermark import font_file
    from stages.media import ffmpeg_exe
    from stages.watermark import mean_words, mean_words_model, sample_yuv

    font = font_file()
    if font is None:
        pytest.skip("no TrueType font for ffmpeg's drawtext")
    enc = ["-an", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-threads", "1"]
    made = {}
    for name, vf in (("clean", "scale=960:-2"), ("mark", f"scale=960:-2,drawtext=fontfile='{font}':text='TV1':fontsize=32:fontcolor=black@0.7:x=700:y=241")):
        first, made[name] = str(tmp_path / f"{name}0.mp4"), str(tmp_path / f"{name}.mp4")
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-ss", "0.5", "-t", "2", "-i", str(videos / "traffic_camera.mp4"), "-vf", vf,
                        *enc, "-crf", "20", first], check=True)
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", first, *enc, "-crf", "18", made[name]], check=True)

    models = {size: mean_words_model(WatermarkConfig(mean_words_size=size)) for size in (960, 480)}

    def read(path, size):
        cfg = WatermarkConfig(mean_words_size=size)
        frames, chroma, w, h = sample_yuv(path, cfg.frames, cfg.width)
        return mean_words(frames, chroma, models[size], cfg, w, h)

    assert WatermarkConfig().mean_words_size == 960
    found = read(made["mark"], 960)
    assert found is not None and found.score >= 0.75, found
    assert 680 <= found.box["x"] <= 710 and 220 <= found.box["y"] <= 250 and 50 <= found.box["w"] <= 110, found.box
    assert read(made["mark"], 480) is None
    assert read(made["clean"], 960) is None and read(made["clean"], 480) is None


def test_the_learned_detector_finds_overlay_styles_it_was_not_trained_on(videos, tmp_path):
    """The default method (`net`), trained on overlay families of its own (curate.bench.watermark_train),
    on three of the bench's styles it never saw: wordless emblems, antialiased TrueType words, an
    OpenCV-drawn PNG logo; five pairs each over bikes.mp4's shots and Big Buck Bunny, made as uploads
    are (composited at crf 20, encoded again as the split does). `python -m curate.bench.watermark
    --styles --seeds 0 1` runs all seven styles on every segment."""
    from curate.bench.watermark import make_style_pairs

    pairs = make_style_pairs(str(videos), str(tmp_path), styles=("emblem", "pil_text", "logo"), per_style=5, seed=5)
    cfg = WatermarkConfig(method="net")
    clean = [score_file(c, cfg) for c, _, _ in pairs]
    marked = [score_file(m, cfg) for _, m, _ in pairs]
    cs, ms = [r.score for r in clean], [r.score for r in marked]
    # Measured (the DejaVu fonts only): clean 0.01-0.06 but the fourth segment's (bikes.mp4 at 7.6 s: a
    # still edge of the wall at the frame's left border, 0.39 in each style; the network before, trained
    # on clips of 16 frames far apart scaled twice, gave it 0.78); overlaid 0.95-1.00 but one
    # antialiased word (0.07); AUC 0.99, the box on the mark in 14/15.
    # (The edges method, on the same kind of pairs: emblems 0.70 and antialiased words 0.81 left out of its fit.)
    assert auc(ms, cs) >= 0.95 and all(c < 0.5 for c in cs), (ms, cs)
    assert all(c < 0.15 for k, c in enumerate(cs) if k % 5 != 3), (ms, cs)
    assert sum(m >= 0.5 for m in ms) >= 12, (ms, cs)
    hits = sum(iou(r.box, b) >= 0.3 for r, (_, _, b) in zip(marked, pairs))
    assert hits >= 12, [(r.box, b) for r, (_, _, b) in zip(marked, pairs)]
    # the default, `both`: the edges model beside the network takes no clean clip past 0.5 here and
    # loses no overlay the network caught
    both = WatermarkConfig()
    assert both.method == "both"
    bc, bm = [score_file(c, both).score for c, _, _ in pairs], [score_file(m, both).score for _, m, _ in pairs]
    assert all(b >= n for b, n in zip(bc + bm, cs + ms)) and all(c < 0.5 for c in bc), (bc, bm)
    assert sum(m >= 0.5 for m in bm) >= sum(m >= 0.5 for m in ms)
