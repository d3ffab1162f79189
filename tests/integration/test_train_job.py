"""`curate train jobs/train-tiny.yaml` on the demo job's shards, end to end, then `curate sample` to an mp4."""

import json

import av
import pytest

from curate.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.ray


def test_train_tiny_on_the_demo_shards_then_sample(demo_out, tmp_path, capsys):
    out = tmp_path / "train"
    args = ["train", str(ROOT / "jobs" / "train-tiny.yaml"), "--set", f"data.shards={demo_out}", "--set", f"output={out}",
            "--set", "steps=30", "--set", "log_every=10", "--set", "checkpoint_every=20"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("tokens/s") == 3 and "loss" in printed and "by t 0.00-0.25" in printed
    assert "curate train: steps 0..30 on 1 rank(s)" in printed
    ckpt = out / "checkpoints" / "latest.pt"
    assert ckpt.exists() and (out / "checkpoints" / "step-000020.pt").exists()
    lines = [json.loads(x) for x in (out / "logs" / "rank0.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(30)) and all(x["shape"][1:] == [4, 3, 4, 6] for x in lines)

    # the same job with more steps resumes from the last checkpoint
    assert main(args[:-2] + ["--set", "steps=35"]) == 0
    assert "curate train: steps 30..35" in capsys.readouterr().out

    mp4 = tmp_path / "sample.mp4"
    assert main(["sample", str(ckpt), "--out", str(mp4), "--steps", "8"]) == 0
    assert "unconditional" in capsys.readouterr().out  # no --prompt: the empty-text embedding
    with av.open(str(mp4)) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 9 and (frames[0].width, frames[0].height) == (48, 32)  # the demo's 9x32x48 bucket, decoded by its VAE
    assert (tmp_path / "sample.npy").exists()

    # the demo's shards carry captions and their embeddings (tiny random T5): the model trained on them,
    # and a prompt is embedded by the same encoder (named in the demo's job.yaml)
    assert main(["sample", str(ckpt), "--out", str(mp4), "--prompt", "a car on a street", "--steps", "4"]) == 0
    assert "prompt 'a car on a street'" in capsys.readouterr().out
