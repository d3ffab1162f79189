"""Golden test: every LAION head in ../shared/data/models reproduces reference_scores.json on the
reference embeddings (unit-norm CLIP embeddings of images rated 0..9) within 1e-3."""

import json

import numpy as np
import pytest
import torch

from stages.aesthetic import load_head
from tests.conftest import DATA

MODELS = DATA / "models"
REFERENCE = json.loads((MODELS / "reference_scores.json").read_text()) if (MODELS / "reference_scores.json").exists() else {}


@pytest.mark.parametrize("head", sorted(REFERENCE))
def test_head_reproduces_reference_scores(head, videos):
    ref = REFERENCE[head]
    folder = MODELS / ref["embeddings"].split("/rating")[0]
    emb = np.concatenate([np.load(folder / f"rating{i}.npy") for i in range(10)]).astype(np.float32)
    with torch.no_grad():
        got = load_head(str(MODELS / head))(torch.from_numpy(emb)).squeeze(-1).numpy()
    np.testing.assert_allclose(got, ref["scores"], atol=1e-3)
    if "v1/" in head or "sac+logos+ava1" in head:
        assert (np.diff(got) > 0).all(), "rating0..9 must rank strictly increasing"


def test_every_head_file_has_a_reference(videos):
    files = {str(p.relative_to(MODELS)) for p in MODELS.rglob("*.pth")}
    # the v1 ViT-B/16 head has no reference embeddings here
    assert files - {"laion-aesthetic-v1/sa_0_4_vit_b_16_linear.pth"} == set(REFERENCE)
