import re

from curate.report import Threshold, histogram_svg, thresholds


def test_thresholds_come_from_the_selection_predicate():
    job = {"select": {"where": "motion_score >= 0.5 and aesthetic_score > 4.5 and watermark_score < 0.5e0"}}
    assert [str(t) for t in thresholds(job)] == ["motion_score >= 0.5", "aesthetic_score > 4.5", "watermark_score < 0.5"]
    assert thresholds({}) == [] and thresholds({"select": None}) == []
    t = Threshold("x", ">=", 2.0)
    assert t.passes(2.0) and not t.passes(1.99)
    assert Threshold("x", "<", 2.0).passes(1.0) and not Threshold("x", "<", 2.0).passes(2.0)


def test_histogram_counts_every_value_and_marks_the_threshold():
    values = [0.0] * 5 + [1.0] * 3 + [None, float("nan")]
    svg = histogram_svg(values, [Threshold("s", ">=", 0.5)], width=448, bins=2)
    heights = sorted(float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg))
    assert heights[-1] > heights[0] > 0  # 5 and 3, drawn to scale
    assert "n = 8" in svg  # None and NaN are not values
    x = float(re.search(r'<line x1="([\d.]+)"', svg).group(1))
    assert abs(x - 224) < 1  # 0.5 halfway across [0, 1]
    assert "no values" in histogram_svg([None], [])
