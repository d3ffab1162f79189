"""Every GPU step through Ray's GPU scheduling path on a CPU machine: a local Ray instance that declares
one GPU (`ray.num_gpus=1`), so the aesthetic, caption and latents pools ask Ray for it (num_gpus=1 with
a concrete batch_size; Ray rejects batch_size=None there) while the models run on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curate.catalog import query
from tests.conftest import ROOT

pytestmark = pytest.mark.ray


def test_demo_with_a_declared_gpu(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    ray_tmp = Path("/tmp") / f"cfg{os.getpid()}"  # its own Ray instance, never found by the session's
    env["RAY_TMPDIR"] = str(ray_tmp)
    cmd = [sys.executable, "-m", "curate.cli", "run", str(ROOT / "jobs" / "demo.yaml"), "-v", "--set", f"output={out}",
           "--set", "ray.num_gpus=1", "--set", "ray.num_cpus=2", "--set", "input.samples.n_videos=2",
           "--set", "select.where=null", "--set", "split.encode.preset=ultrafast"]  # fmt: skip
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    # the pools asked Ray for the declared GPU
    pools = [line for line in run.stderr.splitlines() if line.startswith("curate: plan: ")]
    for step in ("aesthetic", "caption", "latents"):  # a share of the GPU each, and no CPU (none would fit)
        assert any(line.startswith(f"curate: plan: {step} pool") and "GPU + 0 CPU each" in line for line in pools), "\n".join(pools)
    assert any("caption pool 1/2 (_Prepare)" in line and "GPU" not in line for line in pools), "\n".join(pools)  # preparation on CPU
    kept = json.loads(query(str(out), "select caption, caption_status, latent_uri, aesthetic_score from clips where status = 'kept'", "json"))
    assert len(kept) >= 2
    for c in kept:
        assert c["caption"] and c["caption_status"] == "ok" and c["latent_uri"] and c["aesthetic_score"] is not None
