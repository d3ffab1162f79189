"""`python -m curate.bench.gpu --dry-run`: every GPU path at tiny sizes on the CPU, one JSON object with every key."""

from __future__ import annotations

import json

import pytest

from curate.bench.gpu import main


def test_dry_run_prints_every_key_with_cpu_figures(capsys):
    assert main(["--dry-run"]) == 0
    r = json.loads(capsys.readouterr().out)  # one JSON object, nothing else on stdout
    assert r["mode"].startswith("dry-run") and r["targets"]["train_mfu"] == 0.4
    for section in ("caption", "clip", "vae", "train", "video"):
        assert "error" not in r[section], r[section]
    cap = r["caption"]["transformers"]
    assert cap["output_tokens_per_s"] > 0 and cap["clips_per_s"] > 0 and cap["all_reached_fixed_length"]
    assert 0 < cap["share_of_matmul_ceiling"] < 1 and "gpu_busy_share" in cap
    assert r["caption"]["vllm"]["skipped"]
    assert r["clip"]["images_per_s_float32"] > 0 and r["clip"]["images_per_s_bf16"] > 0
    vae = r["vae"]
    assert vae["clips_per_s"] > 0 and 0 < vae["share_of_conv3d"] and vae["latent_shape"] == [4, 3, 4, 6]
    assert r["train"]["tokens_per_s"] > 0 and r["train"]["mfu"] is None  # no peak on a CPU
    assert r["video"]["encode"]["libx264"]["fps"] > 0 and r["video"]["decode"]["cpu"]["fps"] > 0
    assert r["video"]["encode"]["nvenc"]["available"] in (True, False)
    assert set(r["summary"]) >= {"caption_output_tokens_per_s", "vae_share_of_conv3d", "train_mfu"}


@pytest.mark.gpu
def test_the_gpu_check_runs_every_path_within_8_minutes(capsys):
    assert main([]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mode"] == "gpu" and r["wall_s"] <= 480
    for section in ("caption", "clip", "vae", "train", "video"):
        assert "error" not in r[section] and "skipped" not in r[section], r[section]
    assert r["caption"]["transformers"]["all_reached_fixed_length"] and r["train"]["mfu"] is not None
