"""The trainer learns: overfit 4 captioned clips on the CPU, then each caption samples its own clip."""

import av
import numpy as np
import pytest
import torch
import yaml

from curate.cli import main
from curate.train.loop import DataSection, ModelSection, OptimSection, TrainConfig, train
from curate.train.sample import embed_prompts, load_checkpoint, sample_latents
from stages.latents import TextEmbeddingConfig, load_text_encoder, save_tiny_text_encoder
from tests.train_shards import write_shards

STEPS = 400  # about 10 s on one busy CPU core
CAPTIONS = ["a person on the street", "a car in the water", "a tree and the sky", "people with a camera moving"]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is fastest on one thread, above all on a busy machine
    yield
    torch.set_num_threads(n)


def test_overfit_four_captioned_clips_and_sample_each_caption(tmp_path, one_thread):
    t5 = save_tiny_text_encoder(str(tmp_path / "t5"), "t5")
    text_cfg = TextEmbeddingConfig(encoder="t5", model=t5, max_length=8)
    emb, mask = load_text_encoder(text_cfg)(CAPTIONS)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((4, 4, 2, 4, 4)).astype(np.float16)
    clips = [{"key": f"clip{i}", "latent": latents[i], "caption": c, "text_emb": emb[i], "text_mask": mask[i]}
             for i, c in enumerate(CAPTIONS)]
    write_shards(tmp_path / "data", clips, [2, 2])
    cfg = TrainConfig(output=str(tmp_path / "run"), steps=STEPS, seed=0, log_every=50, checkpoint_every=STEPS,
                      model=ModelSection(size="tiny", caption_dropout=0.1),
                      data=DataSection(shards=str(tmp_path / "data"), batch_size=8, shuffle_buffer=4),
                      optim=OptimSection(lr=3e-3, warmup_steps=20), ema_decay=0.9)
    done = train(cfg)
    # from about 1 + Var(x0) = 2 (the zero-initialised output) to well under a fifth of it
    first, last = np.mean(done["losses"][:10]), np.mean(done["losses"][-20:])
    print(first, last, done["rates"])
    assert last < first / 5, (first, last)

    model, state = load_checkpoint(done["checkpoint"], "ema")
    text, m = embed_prompts(CAPTIONS, state, text_cfg)
    z = sample_latents(model, text, m, (4, 2, 4, 4), steps=30, guidance=2.0, seed=1).numpy()
    # each caption's sample is nearest its own clip (mean squared distance, normalised latents)
    dist = ((z[:, None] - latents[None].astype(np.float32)) ** 2).reshape(4, 4, -1).mean(-1)  # [sample, clip]
    assert list(dist.argmin(1)) == [0, 1, 2, 3], dist

    # `curate sample --prompt`: the text encoder is found in the curate job beside the shards, the
    # latent decoded by the shards' VAE (the tiny random Wan, rebuilt from its seed) into an mp4
    (tmp_path / "data" / "job.yaml").write_text(yaml.safe_dump({"latents": {"text": {"encoder": "t5", "model": t5, "max_length": 8}}}))
    mp4 = tmp_path / "car.mp4"
    assert main(["sample", done["checkpoint"], "--prompt", CAPTIONS[1], "--out", str(mp4), "--steps", "30", "--guidance", "2"]) == 0
    z = np.load(tmp_path / "car.npy").astype(np.float32)
    assert ((z[None] - latents.astype(np.float32)) ** 2).reshape(4, -1).mean(1).argmin() == 1
    with av.open(str(mp4)) as c:
        assert len(list(c.decode(video=0))) == 5  # 2 latent frames of a causal 4x VAE: 1 + 4 frames
    (tmp_path / "data" / "job.yaml").unlink()
    assert main(["sample", done["checkpoint"], "--prompt", CAPTIONS[1], "--out", str(mp4)]) == 2  # which encoder? says so

