"""Latents: a tiny random Wan VAE saved and loaded like a real one, buckets, frame timing, text embeddings."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds

from curate.config import ConfigError, JobConfig, from_dict
from curate.latents import check_latents
from stages.latents import (
    TINY,
    VAE,
    VAE_CLASSES,
    EncodeLatents,
    LatentsConfig,
    TextEmbeddingConfig,
    WeightsError,
    load_text_encoder,
    load_vae,
    pick_bucket,
    random_vae,
    read_bucket_frames,
    save_tiny_text_encoder,
    save_tiny_vae,
    vae_geometry,
)
from stages.shards import ShardConfig, WriteShards
from tests.conftest import VIDEOS

BUCKETS = ((9, 32, 48), (9, 32, 32), (5, 32, 32))


@pytest.fixture(scope="module")
def torch_one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than two fighting
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory, torch_one_thread):
    return save_tiny_vae(str(tmp_path_factory.mktemp("models") / "vae"))


@pytest.fixture(scope="module")
def vae(tiny_vae_dir):
    return load_vae(LatentsConfig(vae=tiny_vae_dir, buckets=BUCKETS))


def clip_rows():
    return [
        # bikes: 640x272 (2.35:1), long enough for 9 frames at 8 fps
        dict(clip_id="bikes_0_30", source_id="a", start_frame=0, status="kept", clip_uri=str(VIDEOS / "bikes.mp4"),
             width=640, height=272, duration_s=1.2, caption="a person on a bike in the street"),
        # counter: 10 fps, 3 s, 4:3
        dict(clip_id="counter_0_30", source_id="b", start_frame=0, status="kept", clip_uri=str(VIDEOS / "counter.mp4"),
             width=320, height=240, duration_s=3.0, caption=None),
        dict(clip_id="short", source_id="c", start_frame=0, status="kept", clip_uri=str(VIDEOS / "counter.mp4"),
             width=320, height=240, duration_s=0.4, caption=None),
        dict(clip_id="gone", source_id="d", start_frame=0, status="filtered", clip_uri=None,
             width=320, height=240, duration_s=3.0, caption=None),
    ]


def encode(vae, out_root, **cfg) -> list[dict]:
    stage = EncodeLatents(LatentsConfig(buckets=BUCKETS, fps=8, **cfg), str(out_root), vae=vae)
    return stage(pa.Table.from_pylist(clip_rows())).to_pylist()


def test_tiny_wan_loads_through_the_real_path_and_records_where_it_came_from(vae, tiny_vae_dir):
    assert vae.cls_name == "AutoencoderKLWan"
    assert vae.vae_id.startswith(tiny_vae_dir) and vae.vae_id.endswith("(random weights)")
    assert vae.revision.startswith("sha256:")
    g = vae.geometry
    assert (g.temporal, g.spatial, g.channels) == (4, 8, 4)  # read from the saved config.json
    assert len(vae.norm["latent_channel_mean"]) == len(vae.norm["latent_channel_std"]) == g.channels  # per-channel stats, one per latent channel


def test_latents_have_the_declared_shape_dtype_and_metadata(vae, tmp_path):
    rows = {r["clip_id"]: r for r in encode(vae, tmp_path, logvar=True)}
    bikes, counter = rows["bikes_0_30"], rows["counter_0_30"]
    assert bikes["latent_bucket"] == counter["latent_bucket"] == "9x32x48"  # 4:3 is nearer 3:2 than 1:1
    for r, (f, h, w) in [(bikes, (9, 32, 48)), (counter, (9, 32, 48))]:
        z = np.load(r["latent_uri"])
        assert z.dtype == np.float16 and list(z.shape) == r["latent_shape"] == [4, (f - 1) // 4 + 1, h // 8, w // 8]
        assert np.isfinite(z).all() and z.std() > 0
        lv = np.load(r["latent_logvar_uri"])
        assert lv.shape == z.shape and lv.dtype == np.float16
        assert (r["latent_frames"], r["latent_fps"], r["vae_class"]) == (f, 8.0, "AutoencoderKLWan")
        assert r["status"] == "kept"
    # too short for every bucket at 8 fps: filtered with a reason; rows not kept pass through untouched
    assert (rows["short"]["status"], rows["short"]["reason"], rows["short"]["latent_uri"]) == ("filtered", "no_bucket", None)
    assert rows["gone"]["latent_uri"] is None and rows["gone"]["status"] == "filtered" and rows["gone"]["reason"] is None


def test_decoding_a_latent_gives_a_video_of_the_buckets_shape(vae, tmp_path):
    r = next(r for r in encode(vae, tmp_path) if r["clip_id"] == "bikes_0_30")
    video = vae.decode(np.load(r["latent_uri"])[None])
    assert video.shape == (1, 3, 9, 32, 48)


def test_two_runs_give_identical_latents(vae, tiny_vae_dir, tmp_path):
    a = encode(vae, tmp_path / "a")
    again = load_vae(LatentsConfig(vae=tiny_vae_dir, buckets=BUCKETS))  # a fresh load, too
    b = encode(again, tmp_path / "b")
    for ra, rb in zip(a, b):
        if ra["latent_uri"]:
            assert open(ra["latent_uri"], "rb").read() == open(rb["latent_uri"], "rb").read()
    assert sum(r["latent_uri"] is not None for r in a) == 2


def test_a_bucket_that_breaks_the_vaes_frame_rule_is_refused(vae, tmp_path):
    with pytest.raises(ValueError, match="4k\\+1"):
        EncodeLatents(LatentsConfig(buckets=((8, 32, 32),)), str(tmp_path), vae=vae)
    with pytest.raises(ValueError, match="multiples of 8"):
        EncodeLatents(LatentsConfig(buckets=((9, 36, 32),)), str(tmp_path), vae=vae)
    with pytest.raises(ConfigError, match="4k\\+1"):  # at job start, without loading weights
        check_latents(LatentsConfig(weights="random-tiny", buckets=((8, 32, 32),)))


def test_missing_hub_weights_say_what_to_download():
    cfg = LatentsConfig(vae="curate-test/no-such-vae-anywhere", revision="main")
    with pytest.raises(WeightsError, match="huggingface-cli download curate-test/no-such-vae-anywhere"):
        load_vae(cfg)
    with pytest.raises(ConfigError, match="latents.vae=PATH"):
        check_latents(cfg)


@pytest.mark.parametrize("cls", [c for c in VAE_CLASSES if c != "AutoencoderKLWan"])
def test_every_vae_class_encodes_to_the_shape_its_config_declares(cls, torch_one_thread):
    v = VAE(random_vae(cls, "tiny"), cls, None)
    g = vae_geometry(v.model)
    f = 1 + 2 * g.temporal if g.temporal > 1 else 3
    video = np.random.RandomState(0).randint(0, 255, (1, f, 2 * g.spatial, 3 * g.spatial, 3), dtype=np.uint8)
    mean, _ = v.encode(video)
    assert mean.shape[1:] == g.latent_shape(f, 2 * g.spatial, 3 * g.spatial)
    assert set(TINY) == set(VAE_CLASSES)


def test_pick_bucket_prefers_the_aspect_ratio_then_more_frames():
    buckets = ((33, 480, 832), (33, 624, 624), (81, 480, 832), (81, 832, 480))
    assert pick_bucket(buckets, 1920, 1080, 10.0, 16) == (81, 480, 832)
    assert pick_bucket(buckets, 1080, 1920, 10.0, 16) == (81, 832, 480)
    assert pick_bucket(buckets, 1920, 1080, 3.0, 16) == (33, 480, 832)  # 81 frames need 5.06 s
    assert pick_bucket(buckets, 1000, 1000, 10.0, 16) == (33, 624, 624)
    assert pick_bucket(buckets, 1920, 1080, 2.0, 16) is None


def test_bucket_frames_are_taken_at_the_target_rate_and_centre_cropped():
    # counter.mp4: 10 fps, colour changes at frames 10 and 20. At 4 fps, bucket frame i is source
    # frame floor(i * 10 / 4): 0 2 5 7 | 10 12 15 17 | 20
    frames = read_bucket_frames(str(VIDEOS / "counter.mp4"), 9, 32, 48, 4.0)
    assert frames.shape == (9, 32, 48, 3) and frames.dtype == np.uint8
    colour = frames.reshape(9, -1, 3).mean(1)
    same = lambda i, j: np.abs(colour[i] - colour[j]).max() < 8  # noqa: E731
    assert all(same(0, i) for i in range(1, 4)) and not same(3, 4)
    assert all(same(4, i) for i in range(5, 8)) and not same(7, 8)


@pytest.mark.parametrize("encoder", ["t5", "clip"])
def test_caption_embeddings_with_attention_mask(encoder, vae, tmp_path, torch_one_thread):
    folder = save_tiny_text_encoder(str(tmp_path / encoder), encoder)
    text = load_text_encoder(TextEmbeddingConfig(encoder=encoder, model=folder, max_length=16))
    assert text.name.endswith("(random weights)")
    stage = EncodeLatents(LatentsConfig(buckets=BUCKETS, fps=8, text=TextEmbeddingConfig(encoder=encoder, model=folder, max_length=16)),
                          str(tmp_path / "out"), vae=vae, text=text)
    rows = {r["clip_id"]: r for r in stage(pa.Table.from_pylist(clip_rows())).to_pylist()}
    r = rows["bikes_0_30"]
    emb, mask = np.load(r["text_emb_uri"]), np.load(r["text_mask_uri"])
    assert emb.dtype == np.float16 and emb.shape == (16, 32) and r["text_emb_shape"] == [16, 32]
    n = int(mask.sum())
    assert 7 <= n < 16 and mask[:n].all()  # 7 words (+ specials), then padding
    assert np.abs(emb[:n]).sum(-1).min() > 0 and not emb[n:].any()
    assert rows["counter_0_30"]["text_emb_uri"] is None  # no caption, no embedding


def test_shard_samples_carry_the_latent_files_and_metadata(vae, tmp_path):
    rows = [r for r in encode(vae, tmp_path, logvar=True) if r["latent_uri"]]
    for r in rows:
        r.update(clip_uri=r["latent_uri"], clip_bytes=1, license="CC0-1.0", shard="shards/shard-000000.tar")
    WriteShards(ShardConfig(), str(tmp_path))(pa.Table.from_pylist(rows))
    samples = list(wds.WebDataset(str(tmp_path / "shards/shard-000000.tar"), shardshuffle=False))
    assert len(samples) == 2
    for s in samples:
        meta = json.loads(s["json"])
        z = np.load(io.BytesIO(s["latent.npy"]))
        assert list(z.shape) == meta["latent_shape"] and z.dtype == np.float16
        assert np.load(io.BytesIO(s["latent_logvar.npy"])).shape == z.shape
        assert meta["vae_class"] == "AutoencoderKLWan" and "latent_uri" not in meta and "latent_bucket" in meta


def test_job_config_reads_the_latents_section():
    data = {"output": "/tmp/x", "input": {"dir": "/tmp"},
            "latents": {"weights": "random-tiny", "buckets": [[9, 32, 48]], "fps": 8, "text": {"encoder": "clip", "max_length": 77}}}
    cfg = from_dict(JobConfig, data)
    assert cfg.latents.buckets == ((9, 32, 48),) and cfg.latents.text.encoder == "clip"
    with pytest.raises(ConfigError, match=r"latents: bucket \[9, 32\] must be three"):
        from_dict(JobConfig, {**data, "latents": {"buckets": [[9, 32]]}})
    with pytest.raises(ConfigError, match="latents.vae_class"):
        from_dict(JobConfig, {**data, "latents": {"vae_class": "AutoencoderTiny"}})
    assert dataclasses.replace(cfg, latents=None).latents is None


@pytest.mark.gpu
def test_gpu_bf16_batched_tiled_latents_match_the_cpu(tiny_vae_dir, tmp_path):
    cpu = encode(load_vae(LatentsConfig(vae=tiny_vae_dir, buckets=BUCKETS, device="cpu")), tmp_path / "cpu")
    gpu_vae = load_vae(LatentsConfig(vae=tiny_vae_dir, buckets=BUCKETS, device="cuda", dtype="bfloat16", tiling=True, slicing=True))
    assert gpu_vae.device == "cuda"
    gpu = encode(gpu_vae, tmp_path / "gpu", batch_size=4)
    for a, b in zip(cpu, gpu):
        if a["latent_uri"]:
            za, zb = np.load(a["latent_uri"]).astype(np.float32), np.load(b["latent_uri"]).astype(np.float32)
            assert za.shape == zb.shape and np.abs(za - zb).max() < 0.05 * (np.abs(za).max() + 1e-3)  # bf16 rounding
