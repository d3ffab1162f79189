"""stages.timeline: wrong but decodable timestamps become a timeline that only goes forward."""

from fractions import Fraction

from stages.timeline import JUMP_S, REORDER, Timeline


def times(raw, tb=Fraction(1, 25), fps=25.0):
    tl = Timeline(tb, fps)
    out = list(tl.run((p, k) for k, p in enumerate(raw)))
    assert [k for k, _, item in out] == list(range(len(raw)))  # output order kept, every frame given out
    assert [item for _, _, item in out] == list(range(len(raw)))
    return [t for _, t, _ in out], tl


def test_clean_timestamps_are_untouched():
    t, tl = times(list(range(10, 60)))
    assert t == list(range(10, 60)) and tl.report() == ("ok", None) and tl.cuts == []
    assert tl.seconds(49) == 49 / 25


def test_pts_swapped_in_pairs_are_sorted_back():
    raw = [1, 2, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12]  # packed B-frames
    t, tl = times(raw)
    assert t == list(range(1, 13))
    status, note = tl.report()
    assert status == "repaired" and "out of order" in note and tl.cuts == []


def test_repeats_and_steps_back_become_one_nominal_frame_later():
    tb = Fraction(1, 12800)  # 512 ticks a frame at 25 fps
    t, tl = times([0, 3, 2, 1024, 1024, 2048, 2560], tb=tb)
    assert t == [0, 2, 3, 1024, 1536, 2048, 2560]
    assert all(b > a for a, b in zip(t, t[1:]))
    assert tl.counts["repeated"] == 1


def test_missing_pts_count_on_at_the_nominal_rate():
    t, tl = times([0, 1, None, None, 4, 5])
    assert t == [0, 1, 2, 3, 4, 5] and tl.counts["missing"] == 2


def test_a_restart_is_a_discontinuity_and_a_new_scene():
    raw = list(range(100, 200)) + list(range(100, 200))  # two 4 s segments, timestamps restart
    t, tl = times(raw)
    assert all(b > a for a, b in zip(t, t[1:]))
    assert tl.cuts == [100] and tl.counts["restart"] == 1
    assert tl.seconds(199) == 199 / 25  # 8 s of frames, one nominal frame between the segments


def test_a_forward_jump_is_a_gap_not_content():
    jump = round(2400 * 25)  # 40 minutes
    raw = list(range(100)) + [k + jump for k in range(100, 250)]
    t, tl = times(raw)
    assert tl.cuts == [100] and tl.counts["gap"] == 1
    assert abs(tl.seconds(249) - 249 / 25) < 1e-9
    assert "2400.0 s skipped" in tl.report()[1]


def test_a_gap_under_the_threshold_is_content():
    """Variable frame rate holds a frame for a while; under JUMP_S that is content, not a break."""
    hold = int(JUMP_S * 25) - 5
    raw = list(range(10)) + [k + hold for k in range(10, 20)]
    t, tl = times(raw)
    assert t == raw and tl.report() == ("ok", None)


def test_few_frames_come_out_at_the_end():
    t, _ = times([0, 2, 1])  # fewer frames than the look-ahead: all given out by finish(), sorted
    assert t == [0, 1, 2] and REORDER > 3
    t, _ = times([])
    assert t == []
