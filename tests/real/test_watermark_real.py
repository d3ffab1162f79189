"""Watermark scores on overlay pairs made from the real videos (the same segment with and without an
overlay burned in by ffmpeg, varied kind, position, size and opacity): overlaid clips must rank above
clean ones. `python -m curate.bench.watermark` runs the full set (28 pairs) and prints its AUC."""

from curate.bench.watermark import auc, make_pairs, score_file
from stages.watermark import WatermarkConfig


def test_overlaid_clips_rank_above_clean_ones(videos, tmp_path):
    cfg = WatermarkConfig()
    pairs = make_pairs(str(videos), str(tmp_path), 6)  # bikes x4, bigbuckbunny, testvideo: pictures that move
    clean = [score_file(c, cfg).score for c, _, _ in pairs]
    marked = [score_file(m, cfg).score for _, m, _ in pairs]
    # Measured here: 0.78 on these 6 pairs, 0.60 on the bench's 28 (static cameras and static
    # foreground make clean clips look overlaid). The target, 0.95, is not met yet.
    assert auc(marked, clean) >= 0.7, (marked, clean)
    assert sum(m >= c for m, c in zip(marked, clean)) >= 5  # the overlaid copy scores at least as high
