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
    cfg = WatermarkConfig()
    clean = [score_file(c, cfg) for c, _, _ in pairs]
    marked = [score_file(m, cfg) for _, m, _ in pairs]
    cs, ms = [r.score for r in clean], [r.score for r in marked]
    # Measured: AUC 0.954 on these 14 (the bench: 0.952, 0.949 and 0.959 on seeds 1, 2 and 3, 42 pairs
    # each; 0.968 leave-one-video-out over 154 pairs; the target: 0.95).
    assert auc(ms, cs) >= 0.92, (ms, cs)
    # 0.5 is a working threshold (fitted on seed 0): clean clips stay below it, most overlays go above
    # (measured: 0/14 clean, 11/14 overlaid).
    assert sum(c >= 0.5 for c in cs) <= 1 and sum(m >= 0.5 for m in ms) >= 8, (ms, cs)
    # Opaque enough to see (opacity >= 0.7): the overlaid copy scores above its clean twin.
    strong = [(m, c, b) for m, c, (_, _, b) in zip(ms, cs, pairs) if b["opacity"] >= 0.7]
    assert strong and sum(m > c for m, c, _ in strong) >= len(strong) - 1, strong
    # The box lands on the overlay in most pairs.
    hits = sum(iou(r.box, b) >= 0.3 for r, (_, _, b) in zip(marked, pairs))
    assert hits >= len(pairs) // 2 + 1, [(r.box, b) for r, (_, _, b) in zip(marked, pairs)]
