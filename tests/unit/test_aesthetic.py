"""Aesthetic scorer with a tiny randomly initialised CLIP saved the way a real one is stored (an
open_clip local folder), loaded through the same code path."""

import json
import subprocess

import numpy as np
import pyarrow as pa
import pytest
import torch

from schemas import CLIPS
from stages.aesthetic import AestheticConfig, ScoreAesthetic, WeightsError, load_model, random_head_state

TINY = {
    "model_cfg": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("tiny-clip")
    (d / "open_clip_config.json").write_text(json.dumps(TINY))
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**TINY["model_cfg"]).state_dict(), d / "open_clip_pytorch_model.bin")
    head = d / "head-linearMSE.pth"
    torch.save(random_head_state(768, seed=1), head)
    return d, head


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory, ffmpeg):
    path = tmp_path_factory.mktemp("aes") / "clip.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=10", "-frames:v", "20",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return str(path)


def _table(rows):
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in CLIPS} for r in rows], schema=CLIPS)


def test_tiny_clip_from_a_folder_scores_kept_clips(weights, clip_file):
    folder, head = weights
    cfg = AestheticConfig(weights=str(folder), head=str(head), frames=3)
    model = load_model(cfg)
    assert model.name == f"ViT-L-14/{folder.name}+head-linearMSE"
    rows = [
        {"clip_id": "a", "source_id": "s", "status": "kept", "clip_uri": clip_file, "start_frame": 0, "end_frame": 20},
        {"clip_id": "b", "source_id": "s", "status": "filtered", "reason": "too_short"},
    ]
    out = ScoreAesthetic(cfg, model)(_table(rows)).to_pylist()
    assert out[0]["aesthetic_score"] is not None and np.isfinite(out[0]["aesthetic_score"])
    assert out[0]["aesthetic_model"] == model.name
    assert out[1]["aesthetic_score"] is None and out[1]["aesthetic_model"] is None
    # min over the frames is at most their mean, and the same model gives the same score again
    low = ScoreAesthetic(AestheticConfig(weights=str(folder), head=str(head), frames=3, aggregate="min"), model)(_table(rows))
    assert low["aesthetic_score"][0].as_py() <= out[0]["aesthetic_score"] + 1e-9
    again = ScoreAesthetic(cfg, model)(_table(rows))
    assert again["aesthetic_score"][0].as_py() == pytest.approx(out[0]["aesthetic_score"], abs=1e-6)


def test_missing_or_mismatched_weights_say_what_to_set(weights, tmp_path):
    folder, head = weights
    with pytest.raises(WeightsError, match="aesthetic.weights is not set.*ViT-L-14.*weights=random"):
        AestheticConfig().check()
    with pytest.raises(WeightsError, match="aesthetic.head is not set"):
        AestheticConfig(weights=str(folder)).check()
    with pytest.raises(WeightsError, match="no such file"):
        AestheticConfig(weights=str(tmp_path / "nothing"), head=str(head)).check()
    small = tmp_path / "head512.pth"
    torch.save(random_head_state(512), small)
    with pytest.raises(WeightsError, match="512-wide"):
        load_model(AestheticConfig(weights=str(folder), head=str(small)))


def test_random_weights_are_marked(clip_file):
    cfg = AestheticConfig(clip_model="ViT-B-32", weights="random", head="random", frames=2)
    cfg.check()
    model = load_model(cfg)
    assert "random" in model.name
    out = ScoreAesthetic(cfg, model)(_table([{"clip_id": "a", "source_id": "s", "status": "kept", "clip_uri": clip_file}]))
    assert "random" in out["aesthetic_model"][0].as_py()


@pytest.mark.gpu
def test_clip_runs_on_the_gpu(weights, clip_file):
    folder, head = weights
    model = load_model(AestheticConfig(weights=str(folder), head=str(head), device="cuda"))
    assert next(model.clip.parameters()).is_cuda
    assert np.isfinite(model([np.zeros((64, 64, 3), np.uint8)] * 4)).all()


def test_embeddings_for_dedup_come_from_the_same_clip_pass(weights, clip_file):
    """With embeddings on, the stage also gives each scored clip its mean CLIP image embedding (float16,
    unit length: what dedup.embedding_similarity compares), from the very frames it scored; the score
    is the same bytes as without."""
    from stages.aesthetic import EMBEDDING_COLUMN
    from stages.dedup import embeddings_array
    from stages.aesthetic import sample_frames

    folder, head = weights
    cfg = AestheticConfig(weights=str(folder), head=str(head), frames=3)
    model = load_model(cfg)
    rows = [
        {"clip_id": "a", "source_id": "s", "status": "kept", "clip_uri": clip_file, "start_frame": 0, "end_frame": 20},
        {"clip_id": "b", "source_id": "s", "status": "filtered", "reason": "too_short"},
    ]
    plain = ScoreAesthetic(cfg, model)(_table(rows))
    assert EMBEDDING_COLUMN not in plain.column_names
    out = ScoreAesthetic(cfg, model, embeddings=True)(_table(rows))
    assert out["aesthetic_score"].to_pylist() == plain["aesthetic_score"].to_pylist()
    emb = out[EMBEDDING_COLUMN].to_pylist()
    assert emb[1] is None and len(emb[0]) == 2 * 768  # float16, the tiny CLIP's 768 wide
    got = embeddings_array(out[EMBEDDING_COLUMN])[0]
    frames = model.embed(sample_frames(clip_file, 3, 20))
    frames = frames / np.linalg.norm(frames, axis=1, keepdims=True)
    want = frames.mean(axis=0) / np.linalg.norm(frames.mean(axis=0))
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6) and float(got @ want) > 0.9999
