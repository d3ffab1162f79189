"""The learned overlay detector (watermark method `net`): the shipped weights load offline and say where
they came from, its input maps hold what they claim, it finds a mark on real footage and boxes it, and
its training script makes the same pairs from the same seed and fits and calibrates as it says."""

import json
import os
import random

import cv2
import numpy as np
import pytest
import torch

from curate.bench import watermark_train as T
from curate.bench.watermark import auc
from stages.watermark import Overlay, WatermarkConfig, detect_net, sample_yuv
from stages.watermark_net import MAP_CHANNELS, NET_FILE, STRIDE, build_net, load_net, overlay_maps, provenance


def test_the_shipped_detector_loads_from_the_package_and_says_where_it_came_from(tmp_path):
    net, offset = load_net(NET_FILE)
    info = provenance(NET_FILE)
    members = info.get("members") or [info]  # a --combine of networks trained apart lists theirs
    assert sum(p.numel() for p in net.parameters()) < 100_000 * len(members) and os.path.getsize(NET_FILE) < 400_000 * len(members)
    assert info["made_by"].startswith("python -m curate.bench.watermark_train")
    assert all(m["made_by"].startswith("python -m curate.bench.watermark_train") and m["steps"] > 0 for m in members)
    assert set(info["footage"]["videos"]) <= set(T.footage("videos", "more")) and "none of the watermark bench's seven styles" in info["overlays"]
    assert info["calibration"]["roc_auc"] > 0.9 and info["parameters"] == sum(p.numel() for p in net.parameters())
    assert np.isfinite(offset)
    # weights made for other input maps are refused, not misread
    bad = torch.load(NET_FILE, weights_only=True)
    bad["channels"] = MAP_CHANNELS[:-1]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="map channels"):
        load_net(str(tmp_path / "bad.pt"))


def _moving(n=16, h=120, w=160, seed=0):
    """A textured picture panning a few pixels a frame (grey, uint8)."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 255, (h + 80, w + 80)).astype(np.float32), (0, 0), 4.0)
    big = (big - big.min()) / (big.max() - big.min()) * 200 + 20
    return [big[2 * i:2 * i + h, 3 * i:3 * i + w].astype(np.uint8) for i in range(n)]


def test_maps_hold_a_still_mark_apart_from_a_moving_picture():
    frames = _moving()
    marked = [f.copy() for f in frames]
    for f in marked:
        cv2.rectangle(f, (100, 10), (150, 40), 255, 2)
    cfg = WatermarkConfig()
    maps, frozen = overlay_maps(marked, None, cfg)
    assert not frozen and maps.shape == (len(MAP_CHANNELS), 120, 160) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    persist, coherence = maps[MAP_CHANNELS.index("persist")], maps[MAP_CHANNELS.index("coherence")]
    on = np.zeros((120, 160), np.uint8)
    cv2.rectangle(on, (100, 10), (150, 40), 1, 2)
    on = cv2.dilate(on, np.ones((3, 3), np.uint8)) > 0  # the outline and the pixels its edges are on
    dev = maps[MAP_CHANNELS.index("dev")]
    # the outline's edges are there in every frame and point the same way; the panning texture's are not;
    # and the picture changes less where the outline covers it (measured: 0.80 / 0.11, 0.78 / 0.22, 0.56 / 0.86)
    assert persist[on].mean() > 0.7 and persist[~on].mean() < 0.3, (persist[on].mean(), persist[~on].mean())
    assert coherence[on].mean() > 2 * coherence[~on].mean() and dev[on].mean() < dev[~on].mean()
    assert overlay_maps([frames[0]] * 8, None, cfg) == (None, True)  # nothing moves: frozen


def test_both_takes_the_detector_that_scores_the_clip_higher_with_its_box():
    """The default method `both`: the network and the weight-free edges model on the same frames; the
    clip gets the highest of their findings (and of the two together where they agree: see the test
    below) with its box. A one-pixel outline over a panning texture: both find it, the edges model
    surer and boxing the whole outline (the network: its left side); the clean texture: the network's
    low score (the edges model finds no candidate at all)."""
    from stages.watermark import detect, find_overlay

    cfg = WatermarkConfig()
    assert cfg.method == "both"
    frames = _moving()
    marked = [f.copy() for f in frames]
    for f in marked:
        cv2.rectangle(f, (100, 10), (150, 40), 255, 1)
    for clip in (frames, marked):
        net, edges, got = detect_net(clip, None, cfg, 320, 240), detect(clip, cfg, 320, 240), find_overlay(clip, None, cfg, 320, 240)
        assert got.score >= max(net.score, edges.score) and got.box in (net.box, edges.box), (net, edges, got)
        assert find_overlay(clip, None, WatermarkConfig(method="net"), 320, 240) == net
        assert find_overlay(clip, None, WatermarkConfig(method="edges"), 320, 240) == edges
    clean, found = find_overlay(frames, None, cfg, 320, 240), find_overlay(marked, None, cfg, 320, 240)
    assert clean.score < 0.01 and clean == detect_net(frames, None, cfg, 320, 240)
    assert found.score > detect_net(marked, None, cfg, 320, 240).score > 0.5
    b = found.box  # clip pixels (the frames are half the clip's size): the outline at x 200-300, y 20-80
    assert b["x"] <= 200 and b["x"] + b["w"] >= 300 and b["y"] <= 20 and b["y"] + b["h"] >= 80, b
    # a frozen clip: 0 from the network's maps, the edges not asked
    assert find_overlay([marked[0]] * 8, None, cfg, 320, 240) == Overlay(score=0.0, box=None, frozen=True)
    # the edges' finding counts only with a box at least MIN_SIDE frame pixels across: a one-pixel line
    # of steps (a lamp's rim on a fixed camera) is filmed
    from stages.watermark import MIN_SIDE, higher

    low = Overlay(0.1, {"x": 0, "y": 0, "w": 40, "h": 30})
    thin, wide = Overlay(0.8, {"x": 5, "y": 5, "w": 16, "h": 2}), Overlay(0.8, {"x": 5, "y": 5, "w": 16, "h": 4})
    assert higher(low, thin, 1.0) == thin and higher(low, thin, 2.0) == low and higher(low, wide, 2.0) == wide
    assert higher(low, Overlay(0.05, wide.box), 1.0) == low and MIN_SIDE == 2
    frozen = Overlay(0.0, None, frozen=True)
    assert higher(frozen, wide, 1.0) == frozen  # a clip the network finds frozen keeps its 0


def test_both_adds_the_two_logits_where_the_network_and_the_edges_point_at_the_same_place():
    """Where the network's map is high at the edges' box, the clip scores sigmoid(edges' logit + the
    network's largest logit there + AGREEMENT), with the edges' box: two detectors that look at
    different things and agree on the place are surer than either. Where the network's high logits are
    elsewhere, or the edges' box is too thin to count, there is nothing to agree on."""
    from stages.watermark import AGREEMENT, NEAR, higher, joint_logit
    from stages.watermark_net import STRIDE

    logits = np.full((30, 40), -8.0)
    logits[5:8, 30:34] = -1.0  # the network's peak: frame pixels x 120-136, y 20-32
    at = {"x": 2 * 118, "y": 2 * 18, "w": 2 * 20, "h": 2 * 16}  # clip pixels, the clip twice the frames' size
    away = {"x": 2 * 8, "y": 2 * 80, "w": 2 * 20, "h": 2 * 16}
    net = Overlay(1 / (1 + np.exp(1.0)), {"x": 240, "y": 40, "w": 32, "h": 24}, logits=logits)
    edges = Overlay(0.2, at)
    want = 1 / (1 + np.exp(-(np.log(0.2 / 0.8) - 1.0 + AGREEMENT)))
    got = higher(net, edges, 2.0)
    assert got.box == at and got.score == pytest.approx(want) and want > 0.5 > max(net.score, edges.score)
    assert joint_logit(net, edges, 2.0) == pytest.approx(np.log(0.2 / 0.8) - 1.0)
    # elsewhere: the network's logits at that box are its floor, and the higher of the two stands
    assert joint_logit(net, Overlay(0.2, away), 2.0) == pytest.approx(np.log(0.2 / 0.8) - 8.0)
    assert higher(net, Overlay(0.2, away), 2.0) == net
    # just NEAR cells beside the box still count; one cell further does not
    beside = {"x": 2 * (120 - STRIDE * (NEAR - 1) - 24), "y": 2 * 20, "w": 2 * 24, "h": 2 * 8}
    past = {**beside, "x": beside["x"] - 2 * STRIDE}
    assert joint_logit(net, Overlay(0.2, beside), 2.0) == pytest.approx(np.log(0.2 / 0.8) - 1.0)
    assert joint_logit(net, Overlay(0.2, past), 2.0) == pytest.approx(np.log(0.2 / 0.8) - 8.0)
    # a thin edges box does not count, alone or together; a network without its map: the higher one
    assert joint_logit(net, Overlay(0.2, {**at, "h": 2}), 2.0) is None and higher(net, Overlay(0.2, {**at, "h": 2}), 2.0) == net
    assert higher(Overlay(net.score, net.box), edges, 2.0) == net and higher(Overlay(net.score, net.box), Overlay(0.4, at), 2.0) == Overlay(0.4, at)
    # the agreement constant is the bench's to fit (--fit prints it, --loso refits it): at -inf, the higher one
    assert higher(net, edges, 2.0, agreement=-np.inf) == net


def test_the_agreement_constant_is_fitted_where_the_summed_logits_best_separate_overlaid_from_clean():
    """bench fit_agreement: 0.5 goes midway between the summed logits (edges' + the network's at the
    edges' box) that best separate overlaid from clean clips; clips one detector alone flags already
    count as caught whatever the constant, and clips with nothing to agree on (frozen, no edges box)
    as never flagged by it. The constant fitted puts the joint score of each clip on its side of 0.5."""
    from curate.bench.watermark import _joint, fit_agreement
    from stages.watermark import FEATURES, higher

    weights, bias = (1.0,) + (0.0,) * (len(FEATURES) - 1), 0.0  # the edges' logit is the blob's first feature

    def clip(edges_logit, net_logit, overlay, frozen=False, boxes=True):
        logits = np.full((30, 40), -9.0)
        logits[5:8, 10:14] = net_logit  # frame pixels x 40-56, y 20-32: where the edges' blob is
        feats = np.zeros((1, len(FEATURES)))
        feats[0, 0] = edges_logit
        net = Overlay(float(1 / (1 + np.exp(-net_logit))), {"x": 40, "y": 20, "w": 16, "h": 12}, frozen=frozen, logits=logits)
        return {"feats": feats if boxes else feats[:0], "frame_boxes": [(40, 20, 16, 12)] if boxes else [], "frozen": frozen,
                "sizes": ((160, 120), (160, 120)), "net": net, "overlay": overlay}

    # summed logits: overlaid -1.5, -1.0, -0.5; clean -4.0, -3.5, -3.0: the cut goes midway, at -2.25
    clips = [clip(-0.5, -1.0, True), clip(-0.5, -0.5, True), clip(-0.25, -0.25, True),
             clip(-2.0, -2.0, False), clip(-1.5, -2.0, False), clip(-1.0, -2.0, False)]
    extra = [clip(3.0, -9.0, True),  # the edges alone flag it: caught at any constant
             clip(-1.0, -1.0, True, boxes=False),  # no edges blob: nothing to agree on
             clip(-3.0, -3.0, False, frozen=True)]
    c = fit_agreement(clips + extra, weights, bias)
    assert c == pytest.approx(2.25)
    for k in clips:
        net, edges, scale = _joint(k, weights, bias)
        assert (higher(net, edges, scale, agreement=c).score > 0.5) == k["overlay"]
    # a clean clip above every overlaid one (summed -0.2): no cut catches more without flagging it (1 of 4
    # clean is over 3 %), so the constant keeps every sum under 0.5: the largest, plus 1, lands at -1
    stray = clip(-0.1, -0.1, False)
    c = fit_agreement(clips + [stray], weights, bias)
    assert c == pytest.approx(-0.8) and higher(*_joint(stray, weights, bias), agreement=c).score < 0.5
    # a clean clip the edges alone flag is flagged whatever the constant: it is not the constant's to
    # answer for, so it does not switch the agreement off (counted, 1 of 4 clean is over any budget)
    alone = clip(3.0, -9.0, False)
    assert higher(*_joint(alone, weights, bias), agreement=-np.inf).score > 0.5
    assert fit_agreement(clips + extra + [alone], weights, bias) == pytest.approx(2.25)


def test_the_net_finds_a_mark_composited_over_real_footage_and_boxes_it(videos, tmp_path):
    """An emblem-like mark of the training script's own drawing over bikes.mp4's third shot, encoded
    as a clip is: scored above the clean copy, past 0.5, the box on the mark."""
    T.load_footage(str(videos), ["bikes.mp4"])
    clip = [f[:, :480] for f in T._FOOTAGE["bikes.mp4"][80:128:3]]
    h, w = clip[0].shape[:2]
    rng = random.Random(3)
    mark = T.draw_mark(rng, 64, 56, "shapes").astype(np.float32) / 255
    x, y = w - 64 - 12, 10
    marked = []
    for f in clip:
        g = f.astype(np.float32)
        a = mark[..., 3:4] * 0.8
        g[y:y + 56, x:x + 64] = g[y:y + 56, x:x + 64] * (1 - a) + mark[..., :3] * 255 * a
        marked.append(g.round().astype(np.uint8))
    scores = {}
    for name, frames in (("clean", clip), ("marked", marked)):
        path = str(tmp_path / f"{name}.mp4")
        T._encode(frames, path, 20)
        grey, chroma, cw, ch = sample_yuv(path, 16, 480)
        scores[name] = detect_net(grey, chroma, WatermarkConfig(), cw, ch)
    assert scores["clean"].score < 0.5 <= scores["marked"].score, scores
    box = scores["marked"].box
    ix = max(0, min(box["x"] + box["w"], x + 64) - max(box["x"], x))
    iy = max(0, min(box["y"] + box["h"], y + 56) - max(box["y"], y))
    assert ix * iy >= 0.3 * 64 * 56, box


def test_training_pairs_are_the_same_from_the_same_seed_and_labelled_where_the_mark_is(videos):
    T.load_footage(str(videos), ["carphone_pristine.mp4"])
    names = ("carphone_pristine.mp4",)
    a, b = T.make_pair(7, names), T.make_pair(7, names)
    (clean, clean_label), (marked, label) = a
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert clean.shape[0] == len(MAP_CHANNELS) and clean.dtype == np.uint8
    assert label.shape == (-(-clean.shape[1] // STRIDE), -(-clean.shape[2] // STRIDE))
    assert not clean_label.any() and label.any()
    # where the label is, the overlaid clip's maps differ from the clean twin's (the mark is there)
    diff = np.abs(marked.astype(int) - clean.astype(int)).sum(axis=0)
    on = np.kron(label, np.ones((STRIDE, STRIDE)))[:diff.shape[0], :diff.shape[1]] > 0
    assert diff[on].mean() > 2 * diff[~on].mean()


def test_fitting_learns_the_label_and_calibration_puts_half_at_the_chosen_cut():
    rng = np.random.default_rng(0)
    samples = []
    for k in range(12):  # maps with a bright square where the label is, or none
        maps = (rng.random((len(MAP_CHANNELS), 64, 64)) * 60).astype(np.uint8)
        label = np.zeros((16, 16), np.uint8)
        if k % 2:
            maps[:, 16:32, 24:40] = 250
            label[4:8, 6:10] = 1
        samples.append((maps, label))
    net = T.fit(samples, steps=60, seed=0, batch=4, size=64, log=lambda *_: None)
    logits, labels = T.clip_logits(net, samples)
    assert auc(logits[labels], logits[~labels]) == 1.0
    assert isinstance(build_net()[0], torch.nn.Conv2d)
    # calibration: 0.5 goes midway between the clean clips' highest and the overlays above it
    logits = np.array([-3.0, -2.0, -1.0, 0.5, 1.0, 2.0])
    labels = np.array([False, False, False, True, True, True])
    off = T.calibrate(logits, labels)
    assert off == pytest.approx(0.25) and ((logits + off > 0) == labels).all()
    # a clean clip above every overlay and no budget for it: every clip under 0.5 (not the top one at it)
    odd = np.array([True, True, False, False, False, False])
    off = T.calibrate(logits, odd, max_clean=0.0)
    assert off == pytest.approx(-3.0) and (logits + off < 0).all()


def test_the_watermark_step_is_scored_again_when_the_weights_change(tmp_path):
    from curate.score import watermark_model_info

    other = tmp_path / "other.pt"
    saved = torch.load(NET_FILE, weights_only=True)
    saved["offset"] = saved["offset"] + 1.0
    torch.save(saved, other)
    for method in ("net", "both"):
        shipped = watermark_model_info(WatermarkConfig(method=method))
        assert shipped[0] == method and shipped != watermark_model_info(WatermarkConfig(method=method, net_weights=str(other)))
        with pytest.raises(FileNotFoundError, match="net_weights"):
            WatermarkConfig(method=method, net_weights=str(tmp_path / "missing.pt")).check()
    edges = watermark_model_info(WatermarkConfig(method="edges", mean_words=False))
    # both: the network's file, the edges constants and how the two are combined
    from stages.text import model_info
    from stages.watermark import AGREEMENT, MIN_SIDE, NEAR

    assert edges[0] != "net" and watermark_model_info(WatermarkConfig(mean_words=False))[2:] == [*edges, MIN_SIDE, AGREEMENT, NEAR]
    # the words read on the mean frame: the OCR models that read them (the default)
    for method in ("net", "both", "edges"):
        assert watermark_model_info(WatermarkConfig(method=method)) == [*watermark_model_info(WatermarkConfig(method=method, mean_words=False)), model_info()]
    assert json.loads(json.dumps(provenance(str(other)))) == {}  # no JSON beside it: no provenance claimed


def test_the_net_gives_the_same_bits_on_a_busy_machine_and_whatever_threads_torch_has(videos):
    """The logits of one real clip: idle, with the CPU saturated by other processes, and with torch set
    to more threads in the process (the network runs on one thread: the same summation order). The
    default method's finding (`both`: the network and the edges model) too."""
    from stages.watermark import find_overlay
    from stages.watermark_net import logit_map
    from tests.conftest import busy_cpu

    cfg = WatermarkConfig()
    grey, chroma, w, h = sample_yuv(str(videos / "traffic_camera.mp4"), 16, 480)
    net, offset = load_net(NET_FILE)

    def logits():
        maps, frozen = overlay_maps(grey, chroma, cfg)
        assert not frozen
        return logit_map(maps, net, offset).tobytes()

    idle, found = logits(), find_overlay(grey, chroma, cfg, w, h)
    with busy_cpu():
        busy = [logits() for _ in range(3)]
        assert find_overlay(grey, chroma, cfg, w, h) == found
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        many = logits()
    finally:
        torch.set_num_threads(threads)
    assert all(b == idle for b in busy) and many == idle and torch.get_num_threads() == threads


def test_the_training_footage_is_upright_as_players_show_it_and_some_stretches_are_turned(videos):
    """issue-134-rotate.mp4 is stored 1280x544 with a 90-degree display rotation: the training script
    reads it portrait, as the split writes its clips, and turns a share of stretches a quarter turn."""
    T.load_footage(str(videos), ["issue-134-rotate.mp4", "carphone_pristine.mp4"])
    h, w = T._FOOTAGE["issue-134-rotate.mp4"][0].shape[:2]
    assert h > w and (w, h) == (544, 1280)
    turned = 0
    for seed in range(8):
        pair = T.make_pair(seed, ("carphone_pristine.mp4",))
        if pair is not None:
            ch, cw = pair[0][0].shape[1:]
            turned += ch > cw  # carphone is 176x144: a pair taller than wide was turned
    assert 0 < turned < 8


def test_a_training_clip_is_a_stretch_of_consecutive_frames_encoded_at_the_rate_they_were_filmed_at(monkeypatch):
    """Clips reach the scorer with every frame at their own rate (a fixed camera's still scene then
    stays exactly still between frames); the training clips are made the same way, not from 16 frames
    picked far apart."""
    monkeypatch.setitem(T._RATE, "long.mp4", 25.0)
    steps = set()
    for seed in range(200):
        idx, rate = T.stretch(random.Random(seed), "long.mp4", 100, 900)
        step = idx.step
        steps.add(step)
        assert 100 <= idx[0] and idx[-1] < 900 and 16 <= len(idx) <= 40
        assert rate == round(25 / step) and len(idx) * step / 25.0 >= 1.5  # at least 1.5 s of the shot
    assert steps == {1, 2, 3}
    idx, rate = T.stretch(random.Random(0), "long.mp4", 10, 14)  # a 4-frame shot: all of it, every frame
    assert list(idx) == [10, 11, 12, 13] and rate == 25


def test_an_unknown_video_to_hold_out_is_an_error(capsys):
    """A misspelt --hold-out name would train over every video while the measurement after it claims otherwise."""
    with pytest.raises(SystemExit):
        T.main(["--hold-out", "bikes.mp4", "vtest.mp4", "--out", "/nonexistent/x.pt"])
    assert "vtest.mp4 not among the training footage" in capsys.readouterr().err


def test_a_still_scene_clip_holds_one_frame_still_but_for_soft_regions_that_move():
    """--still: a fixed camera's clip made from any stretch: most of the picture is one of its frames
    (moving by the sensor noise only), some regions follow the frames; the same seed, the same clip."""
    pics = np.random.default_rng(0).integers(0, 256, (20, 96, 128, 3)).astype(np.uint8)  # every pixel changes every frame
    clip = list(pics)
    for seed in range(8):
        out = T.still_scene(random.Random(seed), clip)
        assert len(out) == 20 and out[0].shape == (96, 128, 3) and out[0].dtype == np.uint8
        std = np.stack(out).astype(np.float32).std(axis=0).max(axis=2)
        still, moving = std < 4.0, std > 40.0
        assert 0.3 < still.mean() and 0.005 < moving.mean() < 0.7, (still.mean(), moving.mean())
        held = [k for k in range(20) if np.abs(out[0][still].astype(np.int16) - pics[k][still]).mean() < 3.0]
        assert len(held) == 1  # the still part is one of the clip's frames
        assert np.array_equal(out[-1], T.still_scene(random.Random(seed), clip)[-1])


def test_combined_networks_average_their_calibrated_logits_and_load_like_one(tmp_path):
    """--combine: members trained apart, each with its offset, saved as one file; loaded back it gives
    the mean of the members' calibrated logits (plus its own offset)."""
    paths = []
    for k in range(2):
        torch.manual_seed(k)
        net = build_net()
        path = tmp_path / f"m{k}.pt"
        torch.save({"net": net.state_dict(), "offset": float(k) - 0.5, "channels": MAP_CHANNELS}, path)
        paths.append(str(path))
    mean = T.combine(paths)
    torch.save({"net": mean.state_dict(), "offset": 0.25, "channels": MAP_CHANNELS, "members": 2}, tmp_path / "mean.pt")
    net, offset = load_net(str(tmp_path / "mean.pt"))
    maps = np.random.default_rng(0).random((len(MAP_CHANNELS), 40, 56)).astype(np.float32)
    from stages.watermark_net import logit_map

    each = [logit_map(maps, *load_net(p)) for p in paths]
    assert offset == 0.25 and not np.allclose(each[0], each[1])
    np.testing.assert_allclose(logit_map(maps, net, offset), (each[0] + each[1]) / 2 + 0.25, rtol=1e-5, atol=1e-5)
