"""VAE latents (and caption embeddings) for the trainer, computed once during curation.

Each kept clip is resampled to a target frame rate, resized and centre-cropped to the nearest
bucket (frames, height, width) and encoded by a diffusers VAE; the latent mean (optionally the
log-variance) goes to OUT/latents/<clip_id>.npy as float16, and the row records everything a trainer
needs to use it: VAE class, id, revision, scaling/shift or per-channel mean/std, shape, frames, fps, bucket.

    clip frames   0    1    2    3    4    5    6 ...      (source fps, times from the clip's first frame)
    bucket frame  0         1         2         3 ...      (latents.fps: frame i is the last clip frame at or before i/fps)
    latent frame  0                   1 ...                (causal video VAE: F = t*k + 1 frames -> k + 1 latent frames)

Compression factors and the frame rule come from the loaded VAE's config (`vae_geometry`). Where the
weights come from is pinned in `PINNED`; nothing here downloads (hub ids load from the local Hugging
Face cache only). `weights: random` / `random-tiny` build the architecture with seeded random weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Literal

import av
import fsspec
import numpy as np
import pyarrow as pa

from schemas import LATENT_FIELDS, TEXT_EMBEDDING_FIELDS, ClipStatus, Reason
from stages.media import local_copy

VAE_CLASSES = (
    "AutoencoderKLWan",
    "AutoencoderKLCogVideoX",
    "AutoencoderKLHunyuanVideo",
    "AutoencoderKLLTXVideo",
    "AutoencoderKL",  # an image VAE, applied frame by frame
)

# The one place that names upstream weights. Revisions are branches: the commit actually loaded
# from the Hugging Face cache is what `vae_revision` records (nothing here downloads).
PINNED = {
    "vae": {
        "AutoencoderKLWan": {"id": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "subfolder": "vae", "revision": "main"},
        "AutoencoderKLCogVideoX": {"id": "THUDM/CogVideoX-2b", "subfolder": "vae", "revision": "main"},
        "AutoencoderKLHunyuanVideo": {"id": "hunyuanvideo-community/HunyuanVideo", "subfolder": "vae", "revision": "main"},
        "AutoencoderKLLTXVideo": {"id": "Lightricks/LTX-Video", "subfolder": "vae", "revision": "main"},
        "AutoencoderKL": {"id": "stabilityai/sd-vae-ft-mse", "subfolder": None, "revision": "main"},
    },
    "text": {
        "t5": {"id": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "subfolder": "text_encoder", "tokenizer_subfolder": "tokenizer", "revision": "main"},
        "clip": {"id": "openai/clip-vit-large-patch14", "subfolder": None, "tokenizer_subfolder": None, "revision": "main"},
    },
}

# Tiny architectures (random weights) for tests and the demo; "random" uses the real sizes below.
TINY = {
    # latents_mean / latents_std sized to z_dim (the diffusers defaults are Wan 2.1's 16 channels): identity normalisation
    "AutoencoderKLWan": dict(base_dim=16, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
                             latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
    "AutoencoderKLCogVideoX": dict(
        block_out_channels=(8, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
    ),
    "AutoencoderKLHunyuanVideo": dict(
        block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
    ),
    "AutoencoderKLLTXVideo": dict(
        block_out_channels=(8, 8, 16, 16), decoder_block_out_channels=(8, 8, 16, 16), latent_channels=8,
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1), patch_size=2,
    ),
    "AutoencoderKL": dict(
        block_out_channels=(8, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ),
}
# Real sizes: the diffusers defaults are the released models' (Wan 2.1, CogVideoX, HunyuanVideo, LTX-Video
# 0.9) except for the image VAE, whose default is a toy; this is Stable Diffusion's.
FULL = {
    "AutoencoderKL": dict(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    ),
}

RANDOM, RANDOM_TINY, PRETRAINED = "random", "random-tiny", "pretrained"
RANDOM_SEED = 0


class WeightsError(ValueError):
    """Weights that are not there; the message says what to download or set."""


@dataclass(frozen=True)
class TextEmbeddingConfig:
    encoder: Literal["t5", "clip"] = "t5"  # T5 encoder (T5EncoderModel / UMT5) or CLIP text tower (CLIPTextModel)
    model: str | None = None  # hub id or local folder (tokenizer in the same folder or in tokenizer_subfolder); default PINNED
    subfolder: str | None = None
    tokenizer_subfolder: str | None = None
    revision: str | None = None
    max_length: int = 512  # tokens, padded to this length (the attention mask says which are real)

    def __post_init__(self):
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")


@dataclass(frozen=True)
class LatentsConfig:
    vae_class: Literal[
        "AutoencoderKLWan", "AutoencoderKLCogVideoX", "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo", "AutoencoderKL"
    ] = "AutoencoderKLWan"
    vae: str | None = None  # hub id (from the local HF cache) or a local folder; default: PINNED for vae_class
    subfolder: str | None = None  # inside `vae` (hub ids default to PINNED's, e.g. "vae")
    revision: str | None = None  # branch, tag or commit (hub ids); default PINNED's
    weights: Literal["pretrained", "random", "random-tiny"] = "pretrained"  # random: real sizes, random weights
    buckets: tuple[tuple[int, int, int], ...] = (
        (81, 480, 832), (81, 832, 480), (81, 624, 624),
        (33, 480, 832), (33, 832, 480), (33, 624, 624),
    )  # (frames, height, width); frames must fit the VAE's rule (4k+1 Wan, 8k+1 LTX), sizes its spatial factor
    fps: float = 16.0  # frames of a bucket are taken at this rate from the clip's start
    logvar: bool = False  # also write the log-variance (latent_logvar.npy)
    batch_size: int = 2  # clips per VAE call (same bucket)
    slicing: bool = False  # vae.enable_slicing(): one clip of a batch at a time
    tiling: bool = False  # vae.enable_tiling(): spatial tiles (less memory for large frames)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    device: Literal["auto", "cpu", "cuda"] = "auto"
    text: TextEmbeddingConfig | None = None  # caption embeddings (rows with a caption)

    def __post_init__(self):
        if not self.buckets:
            raise ValueError("buckets must name at least one (frames, height, width)")
        for b in self.buckets:
            if len(b) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in b):
                raise ValueError(f"bucket {list(b)} must be three positive ints (frames, height, width)")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def source(self) -> dict:
        """Where the VAE comes from: id, subfolder, revision (PINNED filled in for what is unset)."""
        pinned = PINNED["vae"][self.vae_class]
        if self.vae is None:
            return {"id": pinned["id"], "subfolder": self.subfolder or pinned["subfolder"], "revision": self.revision or pinned["revision"]}
        local = os.path.exists(self.vae)
        return {"id": self.vae, "subfolder": self.subfolder, "revision": None if local else (self.revision or "main")}


# ------------------------------------------------------------------------------------------- the VAE


@dataclass(frozen=True)
class Geometry:
    """What a VAE does to a video: compression factors, latent channels, and the frame rule."""

    temporal: int  # 1 for an image VAE applied per frame
    spatial: int
    channels: int
    causal: bool  # first frame alone, then groups of `temporal`: F = temporal * k + 1

    def frames_ok(self, frames: int) -> bool:
        return self.temporal == 1 or (frames - 1) % self.temporal == 0

    def frame_rule(self) -> str:
        return "any" if self.temporal == 1 else f"{self.temporal}k+1"

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        t = frames if self.temporal == 1 else (frames - 1) // self.temporal + 1
        return (self.channels, t, height // self.spatial, width // self.spatial)


def vae_geometry(vae) -> Geometry:
    """Compression factors of a loaded VAE, read from its config (the architecture), never from constants."""
    return geometry_of(type(vae).__name__, dict(vae.config))


def geometry_of(name: str, cfg: dict) -> Geometry:
    """The same from a class name and its config dict (`cls.load_config(folder)`), without loading weights."""
    if name == "AutoencoderKLWan":
        spatial = 2 ** (len(cfg["dim_mult"]) - 1) * (cfg.get("patch_size") or 1)
        return Geometry(2 ** sum(bool(d) for d in cfg["temperal_downsample"]), spatial, cfg["z_dim"], True)
    if name == "AutoencoderKLCogVideoX":
        return Geometry(int(cfg["temporal_compression_ratio"]), 2 ** (len(cfg["block_out_channels"]) - 1), cfg["latent_channels"], True)
    if name == "AutoencoderKLHunyuanVideo":
        return Geometry(int(cfg["temporal_compression_ratio"]), int(cfg["spatial_compression_ratio"]), cfg["latent_channels"], True)
    if name == "AutoencoderKLLTXVideo":  # as diffusers computes them when the config leaves them unset
        scaling = sum(bool(v) for v in cfg["spatio_temporal_scaling"])
        spatial = cfg.get("spatial_compression_ratio") or cfg["patch_size"] * 2**scaling
        temporal = cfg.get("temporal_compression_ratio") or cfg["patch_size_t"] * 2**scaling
        return Geometry(int(temporal), int(spatial), cfg["latent_channels"], True)
    if name == "AutoencoderKL":
        return Geometry(1, 2 ** (len(cfg["block_out_channels"]) - 1), cfg["latent_channels"], False)
    raise ValueError(f"unsupported VAE class {name}; supported: {', '.join(VAE_CLASSES)}")


def vae_config(cfg: LatentsConfig) -> dict:
    """The configured VAE's config dict, without loading weights; WeightsError when it cannot be found."""
    import inspect

    import diffusers

    cls = getattr(diffusers, cfg.vae_class)
    if cfg.weights != PRETRAINED:
        params = inspect.signature(cls.__init__).parameters
        defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        return {**defaults, **(TINY[cfg.vae_class] if cfg.weights == RANDOM_TINY else FULL.get(cfg.vae_class, {}))}
    return dict(cls.load_config(resolve_vae(cfg)[0]))


def check_buckets(cfg: LatentsConfig, geometry: Geometry) -> None:
    for f, h, w in cfg.buckets:
        if not geometry.frames_ok(f) or h % geometry.spatial or w % geometry.spatial:
            raise ValueError(
                f"latents.buckets: ({f}, {h}, {w}) does not fit {cfg.vae_class}: frames must be "
                f"{geometry.frame_rule()}, height and width multiples of {geometry.spatial}"
            )


def normalization(vae) -> dict:
    """How a trainer normalises a latent: scaling/shift factors and/or per-channel mean and std.

    Wan: (z - mean) / std; LTX-Video: (z - mean) * scaling_factor / std; others: (z - shift) * scaling_factor.
    """
    cfg, name = vae.config, type(vae).__name__
    mean = std = None
    if name == "AutoencoderKLLTXVideo":
        mean, std = vae.latents_mean.float().tolist(), vae.latents_std.float().tolist()
    elif getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        mean, std = [float(v) for v in cfg.latents_mean], [float(v) for v in cfg.latents_std]
    scaling = getattr(cfg, "scaling_factor", None)
    shift = getattr(cfg, "shift_factor", None)
    return {
        "latent_scaling_factor": float(scaling) if scaling is not None else None,
        "latent_shift_factor": float(shift) if shift is not None else None,
        "latent_channel_mean": mean,
        "latent_channel_std": std,
    }


class VAE:
    """A loaded diffusers VAE: uint8 videos [B, F, H, W, 3] -> latent mean (and log-variance) [B, C, T, h, w]."""

    def __init__(self, model, vae_id: str, revision: str | None, device: str = "cpu", dtype=None,
                 slicing: bool = False, tiling: bool = False):
        import torch

        self.torch = torch
        self.device, self.dtype = device, dtype or torch.float32
        self.model = model.eval().to(device)
        if self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        self.cls_name = type(model).__name__
        self.vae_id, self.revision = vae_id, revision
        self.geometry = vae_geometry(model)
        self.norm = normalization(model)
        if slicing:
            model.enable_slicing()
        if tiling:
            model.enable_tiling()

    def encode(self, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (mean, logvar), each [B, C, T, h, w], of uint8 RGB videos [B, F, H, W, 3]."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(videos)).to(self.device)
        x = x.permute(0, 4, 1, 2, 3).to(self.dtype) / 127.5 - 1.0  # [B, 3, F, H, W] in [-1, 1]
        b, _, f, h, w = x.shape
        with torch.inference_mode():
            if self.geometry.temporal == 1:  # image VAE: frames into the batch
                frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, 3, h, w)
                dist = self.model.encode(frames).latent_dist
                unfold = lambda z: z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)  # noqa: E731
                mean, logvar = unfold(dist.mean), unfold(dist.logvar)
            else:
                dist = self.model.encode(x).latent_dist
                mean, logvar = dist.mean, dist.logvar
        return mean.float().cpu().numpy(), logvar.float().cpu().numpy()

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """float32 video [B, 3, F, H, W] in [-1, 1] of latent means [B, C, T, h, w] (tests, inspection)."""
        torch = self.torch
        z = torch.from_numpy(np.asarray(latent, np.float32)).to(self.device, self.dtype)
        with torch.inference_mode():
            if self.geometry.temporal == 1:
                b, c, t, h, w = z.shape
                out = self.model.decode(z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)).sample
                out = out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4)
            else:
                out = self.model.decode(z).sample
        return out.float().cpu().numpy()


def _device(choice: str) -> str:
    import torch

    return "cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu"


def _dtype(choice: str, device: str):
    import torch

    if choice == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, choice)


def random_vae(vae_class: str, size: str = "tiny", seed: int = RANDOM_SEED):
    """The architecture of `vae_class` with seeded random weights: `tiny` (tests, demo) or `full` (real sizes)."""
    import diffusers
    import torch

    cls = getattr(diffusers, vae_class)
    kwargs = TINY[vae_class] if size == "tiny" else FULL.get(vae_class, {})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(**kwargs)


def save_tiny_vae(path: str, vae_class: str = "AutoencoderKLWan", seed: int = RANDOM_SEED) -> str:
    """A tiny randomly initialised VAE saved with save_pretrained, loadable as `latents.vae: PATH`; a
    RANDOM_WEIGHTS marker file makes `vae_id` say "(random weights)"."""
    random_vae(vae_class, "tiny", seed).save_pretrained(path)
    open(os.path.join(path, "RANDOM_WEIGHTS"), "w").close()
    return path


def _folder_revision(folder: str) -> str:
    """A local folder's 'revision': the sha256 (first 16 hex) of its weight and config files."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith((".safetensors", ".bin", ".json")):
            h.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def resolve_vae(cfg: LatentsConfig) -> tuple[str, str, str | None]:
    """(folder holding the VAE's config.json and weights, vae_id, revision) of a pretrained VAE."""
    src = cfg.source()
    sub = src["subfolder"]
    if os.path.exists(src["id"]):
        folder = os.path.join(src["id"], sub or "")
        if not os.path.exists(os.path.join(folder, "config.json")):
            raise WeightsError(f"latents.vae: no config.json in {folder}; save a VAE there with save_pretrained")
        return folder, os.path.abspath(src["id"]) + (f"/{sub}" if sub else ""), _folder_revision(folder)
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(src["id"], revision=src["revision"], allow_patterns=[f"{sub}/*"] if sub else None,
                                     local_files_only=True)
    except Exception as e:  # not in the local cache (nothing here downloads)
        include = f" --include '{sub}/*'" if sub else ""
        raise WeightsError(
            f"latents: {cfg.vae_class} weights {src['id']} (revision {src['revision']}) are not in the local Hugging Face "
            f"cache: run `huggingface-cli download {src['id']} --revision {src['revision']}{include}` on every node, or set "
            f"latents.vae=PATH (a save_pretrained folder), or latents.weights=random-tiny for a smoke run ({type(e).__name__})"
        ) from e
    commit = os.path.basename(os.path.normpath(snapshot))  # the cache's snapshots/<commit> folder
    return os.path.join(snapshot, sub or ""), src["id"] + (f"/{sub}" if sub else ""), commit


def load_vae(cfg: LatentsConfig) -> VAE:
    """The configured VAE; raises WeightsError saying what to download or set when it is not there."""
    import diffusers

    device = _device(cfg.device)
    opts = dict(device=device, dtype=_dtype(cfg.dtype, device), slicing=cfg.slicing, tiling=cfg.tiling)
    if cfg.weights != PRETRAINED:
        size = "tiny" if cfg.weights == RANDOM_TINY else "full"
        return VAE(random_vae(cfg.vae_class, size), f"{cfg.vae_class}/{cfg.weights} (random weights)", None, **opts)
    folder, vae_id, revision = resolve_vae(cfg)
    model = getattr(diffusers, cfg.vae_class).from_pretrained(folder, low_cpu_mem_usage=False)
    if _is_random(folder):
        vae_id += " (random weights)"
    return VAE(model, vae_id, revision, **opts)


# ------------------------------------------------------------------------------------------- text


class TextEncoder:
    """captions -> float16 embeddings [L, D] (padded to max_length) and uint8 attention masks [L]."""

    def __init__(self, tokenizer, model, name: str, max_length: int, device: str = "cpu"):
        import torch

        self.torch, self.device = torch, device
        self.tokenizer, self.model = tokenizer, model.eval().to(device)
        self.name, self.max_length = name, max_length

    def __call__(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        tok = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)  # padding positions are zeros, not noise
        return hidden.float().cpu().numpy().astype(np.float16), mask.cpu().numpy().astype(np.uint8)


def load_text_encoder(cfg: TextEmbeddingConfig, device: str = "cpu") -> TextEncoder:
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    pinned = PINNED["text"][cfg.encoder]
    model_id = cfg.model or pinned["id"]
    sub = cfg.subfolder if cfg.model else pinned["subfolder"]
    tok_sub = cfg.tokenizer_subfolder if cfg.model else pinned["tokenizer_subfolder"]
    cls = T5EncoderModel if cfg.encoder == "t5" else CLIPTextModel
    local = os.path.exists(model_id)
    kw = {} if local else {"revision": cfg.revision or pinned["revision"], "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, subfolder=tok_sub or "", **kw)
        model = cls.from_pretrained(model_id, subfolder=sub or "", **kw)
    except OSError as e:
        raise WeightsError(
            f"latents.text: cannot load {cfg.encoder} text encoder {model_id}: download it "
            f"(`huggingface-cli download {model_id}`) or set latents.text.model=PATH ({e})"
        ) from e
    name = model_id + (f"/{sub}" if sub else "") + (" (random weights)" if _is_random(model_id) else "")
    return TextEncoder(tokenizer, model, name, cfg.max_length, device)


def _is_random(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "RANDOM_WEIGHTS"))


def save_tiny_text_encoder(path: str, encoder: str = "t5", seed: int = RANDOM_SEED) -> str:
    """A tiny random T5 encoder or CLIP text tower with a locally built word-level tokenizer (tests, demo)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = "a the of and in on with to is are video clip scene person people car street sky water tree moving camera".split()
    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    vocab = {w: i for i, w in enumerate(specials + words + [str(d) for d in range(10)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if encoder == "t5":
            model = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, pad_token_id=0))
        else:
            model = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, max_position_embeddings=77, pad_token_id=0, bos_token_id=3, eos_token_id=1))
    model.save_pretrained(path)
    fast.save_pretrained(path)
    open(os.path.join(path, "RANDOM_WEIGHTS"), "w").close()
    return path


# ------------------------------------------------------------------------------------------- buckets


def pick_bucket(buckets, width: int, height: int, duration_s: float, fps: float):
    """The bucket nearest the clip's aspect ratio among those whose frames fit its duration at `fps`;
    ties go to more frames, then more pixels. None when no bucket is short enough."""
    fits = [b for b in buckets if b[0] / fps <= duration_s + 1e-6]
    if not fits or not width or not height:
        return None
    ar = math.log(width / height)

    def key(b):
        return (round(abs(ar - math.log(b[2] / b[1])), 9), -b[0], -b[1] * b[2])

    return min(fits, key=key)


def read_bucket_frames(path: str, frames: int, height: int, width: int, fps: float) -> np.ndarray:
    """uint8 RGB [frames, height, width, 3]: frame i is the last clip frame at or before i/fps, scaled to
    cover (height, width) and centre-cropped."""
    out: list[np.ndarray] = []
    last = None
    with av.open(path, metadata_errors="ignore") as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        t0 = None
        pending = None  # the newest decoded frame, not yet converted
        for frame in c.decode(s):
            t = float(frame.pts * s.time_base) if frame.pts is not None else 0.0
            t0 = t if t0 is None else t0
            # emit bucket frames whose time falls before this frame
            while len(out) < frames and pending is not None and (t - t0) > len(out) / fps + 1e-6:
                last = last if last is not None and last[0] is pending else (pending, _fit(pending, height, width))
                out.append(last[1])
            if len(out) == frames:
                break
            pending = frame
        while len(out) < frames and pending is not None:  # the clip's last frame holds to the end
            last = last if last is not None and last[0] is pending else (pending, _fit(pending, height, width))
            out.append(last[1])
    if len(out) < frames:
        raise ValueError(f"decoded {len(out)} frames, the bucket needs {frames}")
    return np.stack(out)


def _fit(frame, height: int, width: int) -> np.ndarray:
    scale = max(height / frame.height, width / frame.width)
    w, h = max(width, math.ceil(frame.width * scale)), max(height, math.ceil(frame.height * scale))
    rgb = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
    y, x = (h - height) // 2, (w - width) // 2
    return rgb[y : y + height, x : x + width]


# ------------------------------------------------------------------------------------------- stage


def _write_npy(fs, path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


class EncodeLatents:
    """Stage: CLIPS rows -> the same rows with the latent columns (and text embedding columns) set.

    Kept clips are encoded in batches of the same bucket; files go to `folder` (a path or URL). A kept clip
    no bucket fits (shorter than every bucket at `fps`) becomes `filtered` / `no_bucket`; one whose
    file cannot be decoded becomes `error` / `latent_error`. Other rows pass through with nulls.
    """

    def __init__(self, cfg: LatentsConfig, folder: str, vae: VAE | None = None, text: TextEncoder | None = None):
        self.cfg, self.folder = cfg, folder
        self.vae = vae or load_vae(cfg)
        if cfg.text is not None and text is None:
            text = load_text_encoder(cfg.text, self.vae.device)
        self.text = text
        check_buckets(dataclasses.replace(cfg, vae_class=self.vae.cls_name), self.vae.geometry)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        fs, folder = fsspec.core.url_to_fs(self.folder)
        folder = folder.rstrip("/")
        fs.makedirs(folder, exist_ok=True)
        cols: list[dict] = [{} for _ in rows]
        by_bucket: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            if r.get("status") != ClipStatus.KEPT or not r.get("clip_uri"):
                continue
            b = pick_bucket(self.cfg.buckets, r.get("width"), r.get("height"), r.get("duration_s") or 0.0, self.cfg.fps)
            if b is None:
                r.update(status=ClipStatus.FILTERED, reason=Reason.NO_BUCKET,
                         error=f"shorter than every latents bucket at {self.cfg.fps:g} fps")
                continue
            by_bucket.setdefault(tuple(b), []).append(i)
        for bucket in sorted(by_bucket):
            idx = by_bucket[bucket]
            for start in range(0, len(idx), self.cfg.batch_size):
                self._encode(rows, cols, idx[start : start + self.cfg.batch_size], bucket, fs, folder)
        self._embed_text(rows, cols, fs, folder)
        for r, c in zip(rows, cols):
            r.update(c)
        status = [pa.field("status", pa.string(), nullable=False), pa.field("reason", pa.string()), pa.field("error", pa.string())]
        out = table
        for f in [*status, *LATENT_FIELDS, *TEXT_EMBEDDING_FIELDS]:
            values = pa.array([r.get(f.name) for r in rows], f.type)
            i = out.schema.get_field_index(f.name)
            out = out.set_column(i, f, values) if i >= 0 else out.append_column(f, values)
        return out

    def _encode(self, rows, cols, idx, bucket, fs, folder) -> None:
        f, h, w = bucket
        videos, ok = [], []
        for i in idx:
            try:
                with local_copy(rows[i]["clip_uri"]) as path:
                    videos.append(read_bucket_frames(path, f, h, w, self.cfg.fps))
                ok.append(i)
            except (av.FFmpegError, ValueError, OSError, IndexError) as e:
                rows[i].update(status=ClipStatus.ERROR, reason=Reason.LATENT_ERROR, error=f"latents: {e}")
        if not ok:
            return
        mean, logvar = self.vae.encode(np.stack(videos))
        v = self.vae
        for j, i in enumerate(ok):
            clip_id = rows[i]["clip_id"]
            path = posixpath.join(folder, f"{clip_id}.npy")
            _write_npy(fs, path, mean[j].astype(np.float16))
            c = cols[i]
            c.update(
                latent_uri=_uri(fs, path), latent_shape=list(mean[j].shape), latent_dtype="float16",
                latent_frames=f, latent_fps=float(self.cfg.fps), latent_bucket=f"{f}x{h}x{w}",
                vae_class=v.cls_name, vae_id=v.vae_id, vae_revision=v.revision,
                vae_temporal_factor=v.geometry.temporal, vae_spatial_factor=v.geometry.spatial, **v.norm,
            )
            if self.cfg.logvar:
                lpath = posixpath.join(folder, f"{clip_id}.logvar.npy")
                _write_npy(fs, lpath, logvar[j].astype(np.float16))
                c["latent_logvar_uri"] = _uri(fs, lpath)

    def _embed_text(self, rows, cols, fs, folder) -> None:
        if self.text is None:
            return
        idx = [i for i, r in enumerate(rows) if r.get("status") == ClipStatus.KEPT and r.get("caption")]
        for start in range(0, len(idx), 16):
            part = idx[start : start + 16]
            emb, mask = self.text([rows[i]["caption"] for i in part])
            for j, i in enumerate(part):
                clip_id = rows[i]["clip_id"]
                epath = posixpath.join(folder, f"{clip_id}.text_emb.npy")
                mpath = posixpath.join(folder, f"{clip_id}.text_mask.npy")
                _write_npy(fs, epath, emb[j])
                _write_npy(fs, mpath, mask[j])
                cols[i].update(text_emb_uri=_uri(fs, epath), text_mask_uri=_uri(fs, mpath),
                               text_emb_shape=list(emb[j].shape), text_encoder=self.text.name)


def _uri(fs, path: str) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return path if protocol in ("file", "local") else f"{protocol}://{path}"

