"""Latents through whole jobs: the demo's tiny random Wan VAE, and a saved VAE folder given as latents.vae."""

import io
import json

import numpy as np
import pytest
import webdataset as wds

from curate.catalog import query
from curate.cli import main
from stages.latents import save_tiny_vae
from tests.conftest import ROOT, copy_video

pytestmark = pytest.mark.ray


def test_demo_writes_latents_into_every_shard_sample(demo_out, capsys):
    kept = json.loads(query(str(demo_out), "select clip_id, latent_shape, vae_id from clips where status = 'kept'", "json"))
    assert kept and all(r["latent_shape"] and "AutoencoderKLWan" in r["vae_id"] for r in kept)
    shape_of = {r["clip_id"]: r["latent_shape"] for r in kept}
    n = 0
    for shard in json.loads(query(str(demo_out), "select shard from shards", "json")):
        for s in wds.WebDataset(str(demo_out / shard["shard"]), shardshuffle=False):
            meta = json.loads(s["json"])
            z = np.load(io.BytesIO(s["latent.npy"]))
            assert z.dtype == np.float16 and list(z.shape) == meta["latent_shape"] == shape_of[s["__key__"]]
            f, h, w = map(int, meta["latent_bucket"].split("x"))
            assert list(z.shape) == [4, (f - 1) // 4 + 1, h // 8, w // 8]
            assert meta["vae_id"].endswith("(random weights)") and meta["latent_fps"] == 8.0
            n += 1
    assert n == len(kept)

    # `curate query` shows latent shape and VAE id
    capsys.readouterr()
    assert main(["query", str(demo_out), "select latent_shape, vae_id from clips where status = 'kept' limit 1"]) == 0
    printed = capsys.readouterr().out
    assert "AutoencoderKLWan/random-tiny (random weights)" in printed and "[4," in printed


def test_a_saved_vae_folder_is_loaded_by_the_job(ray_session, tmp_path):
    vae = save_tiny_vae(str(tmp_path / "models" / "vae"))
    copy_video("counter.mp4", tmp_path / "in" / "counter.mp4")
    out = tmp_path / "out"
    args = ["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"input.dir={tmp_path / 'in'}", "--set", f"output={out}",
            "--set", "input.license=CC0-1.0", "--set", "split.encode.preset=ultrafast", "--set", "select.where=null", "--set", "latents.weights=pretrained", "--set", f"latents.vae={vae}"]
    assert main(args) == 0
    rows = json.loads(query(str(out), "select status, latent_uri, vae_id, vae_revision from clips", "json"))
    assert rows and all(r["status"] == "kept" and r["latent_uri"] for r in rows)
    assert all(r["vae_id"] == f"{vae} (random weights)" and r["vae_revision"].startswith("sha256:") for r in rows)
