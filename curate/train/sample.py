"""`curate sample CKPT [--prompt TEXT]`: a trained checkpoint -> latents (Euler, guidance) -> VAE decode -> mp4.

The prompt must be embedded by the text encoder that embedded the shards' captions, or the model sees
vectors it never learnt from. Which one that was is read from the curate job that wrote the shards
(`job.yaml` beside `index.json`: its `latents.text` section) or given with --text-model/--text-encoder.
A checkpoint trained on shards without text embeddings is unconditional: it samples without --prompt
and refuses one. The VAE is the one the shards name (`vae_class`, `vae_id`, `vae_revision` in their
json; the demo's `random-tiny` VAE is rebuilt from its seed, so it decodes with the very weights that
encoded) or --vae FOLDER. The latent is un-normalised the way the trainer normalised it.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from curate.layout import Layout
from curate.train import flow
from curate.train.data import denormalize
from curate.train.model import VideoDiT, from_dict


class SampleError(ValueError):
    """A checkpoint and flags that cannot make a sample; the message says what to give."""


def load_checkpoint(path: str, weights: str = "ema", device="cpu") -> tuple[VideoDiT, dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = VideoDiT(from_dict(state["model_config"]))
    sd = state["ema"] if weights == "ema" and state.get("ema") is not None else state["model"]
    model.load_state_dict(sd)
    return model.eval().to(device), state


def text_config_of(state: dict, text_model: str | None = None, text_encoder: str | None = None):
    """The TextEmbeddingConfig that made the shards' embeddings: flags, else the shards' curate job.yaml."""
    import yaml

    from curate.config import from_dict as cfg_from_dict
    from stages.latents import TextEmbeddingConfig

    info = state["data_info"]
    max_length = info.get("text_len") or 512
    if text_model:
        return TextEmbeddingConfig(encoder=text_encoder or "t5", model=text_model, max_length=max_length)
    shards = state["config"]["data"]["shards"]
    job = os.path.join(shards, Layout.JOB) if isinstance(shards, str) else None
    if job and os.path.exists(job):
        with open(job) as f:
            text = ((yaml.safe_load(f) or {}).get("latents") or {}).get("text")
        if text:
            cfg = cfg_from_dict(TextEmbeddingConfig, text, "latents.text")
            return dataclasses.replace(cfg, max_length=max_length)
    raise SampleError(f"which text encoder made the shards' embeddings ({info.get('text_encoder')})? no job.yaml with "
                      f"latents.text beside {shards}: give --text-model PATH_OR_ID (and --text-encoder t5|clip)")


def embed_prompts(prompts: list[str], state: dict, text_cfg=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings [B, L, D] and masks [B, L] of prompts; empty prompts -> all-False masks (the
    model's learned empty-text embedding)."""
    info = state["data_info"]
    d = state["model_config"]["text_dim"]
    if not any(prompts):
        return torch.zeros(len(prompts), 1, d), torch.zeros(len(prompts), 1, dtype=torch.bool)
    if not info.get("text_dim"):
        raise SampleError("this checkpoint was trained on shards without text embeddings (unconditional): sample without --prompt")
    from stages.latents import load_text_encoder

    encoder = load_text_encoder(text_cfg, "cpu")
    emb, mask = encoder([p or "" for p in prompts])
    if emb.shape[-1] != d:
        raise SampleError(f"text encoder {encoder.name} gives width {emb.shape[-1]}, the model was trained on {d}")
    text, m = torch.from_numpy(emb.astype(np.float32)), torch.from_numpy(mask.astype(bool))
    m[[i for i, p in enumerate(prompts) if not p]] = False
    return text.to(device), m.to(device)


def sample_latents(model: VideoDiT, text: torch.Tensor, mask: torch.Tensor, shape: tuple[int, int, int, int],
                   steps: int = 50, guidance: float = 4.0, shift: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Normalised latents [B, C, T, H, W] for each prompt's embedding (seeded noise, Euler, guidance)."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    noise = torch.randn((text.shape[0], *shape), generator=g).to(device)
    return flow.euler_sample(flow.guided(model, text.to(device), mask.to(device), guidance), noise, steps, shift)


def load_vae_of(state: dict, vae: str | None = None, device: str = "cpu"):
    """The VAE that encoded the shards (stages.latents.VAE), or the folder `vae`."""
    from stages.latents import LatentsConfig, load_vae

    v = state["data_info"].get("vae") or {}
    cls = v.get("vae_class") or "AutoencoderKLWan"
    if vae:
        return load_vae(LatentsConfig(vae_class=cls, vae=vae, device=device))
    vae_id = v.get("vae_id") or ""
    if vae_id.endswith("/random-tiny (random weights)"):
        return load_vae(LatentsConfig(vae_class=cls, weights="random-tiny", device=device, dtype="float32"))
    if vae_id.endswith("/random (random weights)"):
        return load_vae(LatentsConfig(vae_class=cls, weights="random", device=device, dtype="float32"))
    vid = vae_id.removesuffix(" (random weights)")
    if os.path.exists(vid):
        return load_vae(LatentsConfig(vae_class=cls, vae=vid, device=device, dtype="float32"))
    if vid.count("/") >= 2:  # a hub id with its subfolder, "org/name/vae"
        org, name, sub = vid.split("/", 2)
        return load_vae(LatentsConfig(vae_class=cls, vae=f"{org}/{name}", subfolder=sub, revision=v.get("vae_revision"),
                                      device=device, dtype="float32"))
    if vid:
        return load_vae(LatentsConfig(vae_class=cls, vae=vid, revision=v.get("vae_revision"), device=device, dtype="float32"))
    raise SampleError("the checkpoint does not name the shards' VAE: give --vae FOLDER")


def write_mp4(video: np.ndarray, path: str, fps: float) -> str:
    """video float [3, F, H, W] in [-1, 1] -> H.264 mp4 (sizes cropped to even)."""
    import av

    frames = ((np.clip(video, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 3, 0)  # [F, H, W, 3]
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=max(1, round(fps)))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def sample(ckpt: str, prompt: str | None, out: str, steps: int = 50, guidance: float = 4.0, seed: int = 0,
           latent_shape: tuple[int, int, int] | None = None, vae: str | None = None, text_model: str | None = None,
           text_encoder: str | None = None, weights: str = "ema", fps: float | None = None) -> dict:
    """The `curate sample` command: one mp4 (and its latent, OUT.npy) for `prompt`."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, state = load_checkpoint(ckpt, weights, device)
    info = state["data_info"]
    text_cfg = text_config_of(state, text_model, text_encoder) if prompt and info.get("text_dim") else None
    text, mask = embed_prompts([prompt or ""], state, text_cfg)
    shape = (state["model_config"]["in_channels"], *(latent_shape or info["latent_shapes"][0][1:]))
    z = sample_latents(model, text, mask, shape, steps, guidance if prompt else 1.0, state["config"]["flow"]["shift"], seed)
    raw = denormalize(z.float().cpu(), info.get("norm") if state["config"]["data"]["normalize"] else None)
    np.save(os.path.splitext(out)[0] + ".npy", raw[0].numpy().astype(np.float16))
    video = load_vae_of(state, vae, device).decode(raw.numpy())[0]
    write_mp4(video, out, fps or info.get("latent_fps") or 16)
    return {"mp4": out, "latent": os.path.splitext(out)[0] + ".npy", "latent_shape": list(raw.shape[1:]),
            "frames": video.shape[1], "size": list(video.shape[2:]), "prompt": prompt, "conditional": bool(prompt)}
