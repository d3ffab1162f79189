"""A video diffusion transformer over VAE latents, in one file (nanoGPT / DiT style).

    latent [B, C, T, H, W]
      -> 3D patches (pt x ph x pw, default 1x2x2) -> linear -> tokens [B, N, D]      N = T/pt * H/ph * W/pw
      -> depth x block:
           x += gate1 * SelfAttn(modulate(LN(x), shift1, scale1))   3D RoPE on q, k; joint space-time
                                                                   (or factorised: space, time, space, ...)
           x += CrossAttn(LN(x), text tokens)                       the caption's embeddings, projected to D
           x += gate2 * MLP(modulate(LN(x), shift2, scale2))
         shift/scale/gate from the timestep embedding (adaLN-Zero: gates start at zero, so every block
         starts as the identity and the output layer starts at zero)
      -> modulated LN -> linear -> unpatchify -> velocity [B, C, T, H, W]

The text embeddings are the shards' own (`text_emb.npy` [L, text_dim] + `text_mask.npy`); the model
projects them to its width. `null_text` is a learned empty-text embedding (in the same text_dim space):
it stands in for a dropped caption (`caption_dropout`, for classifier-free guidance) and for a sample
that has no caption, so shards without text train an unconditional model.
Attention is torch's `scaled_dot_product_attention` (flash / memory-efficient kernels on a GPU).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 4  # latent channels (from the shards)
    patch: tuple[int, int, int] = (1, 2, 2)  # (time, height, width) of a patch, in latent cells
    width: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    text_dim: int = 32  # width of the shards' text embeddings (from the shards; any value when they have none)
    attention: Literal["joint", "factorized"] = "joint"  # joint space-time, or alternating space / time blocks
    rope_theta: float = 10000.0
    qk_norm: bool = True  # RMSNorm on q and k (steadier in bf16)
    caption_dropout: float = 0.1  # share of training samples whose caption is replaced by `null_text`

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if (self.width // self.heads) % 2 or self.width // self.heads < 6:
            raise ValueError(f"head width {self.width // self.heads} must be even and >= 6 (3D rotary positions)")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be three positive ints (time, height, width), got {self.patch}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")


# Named sizes. tiny: CPU tests and demos (~0.2 M parameters); S and B: DiT-S / DiT-B widths for a GPU.
SIZES: dict[str, dict] = {
    "tiny": dict(width=64, depth=2, heads=4, mlp_ratio=2.0),
    "S": dict(width=384, depth=12, heads=6),
    "B": dict(width=768, depth=12, heads=12),
}


def config_for(size: str, **overrides) -> DiTConfig:
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    return DiTConfig(**{**SIZES[size], **overrides})


# ------------------------------------------------------------------------------------------ pieces


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DiT), [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float, device) -> torch.Tensor:
    """Rotary angles [T*H*W, head_dim/2] for tokens in (t, h, w) order: the pairs of a head are split
    between the three axes (time gets what is left after 2 x head_dim/6 for height and width)."""
    half = head_dim // 2
    hw = half // 3  # pairs per spatial axis
    dims = (half - 2 * hw, hw, hw)
    angles = []
    for n, d in zip(grid, dims):
        freqs = 1.0 / theta ** (torch.arange(d, device=device, dtype=torch.float32) / max(d, 1))
        angles.append(torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs[None])  # [n, d]
    t, h, w = grid
    a_t = angles[0][:, None, None].expand(t, h, w, dims[0])
    a_h = angles[1][None, :, None].expand(t, h, w, dims[1])
    a_w = angles[2][None, None, :].expand(t, h, w, dims[2])
    return torch.cat([a_t, a_h, a_w], dim=-1).reshape(t * h * w, half)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate (even, odd) pairs of the last dimension of x [B, heads, N, d] by angles [N, d/2]."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention with optional RoPE (self) or a key mask (cross)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x, ctx=None, angles=None, mask=None):
        b, n, _ = x.shape
        ctx = x if ctx is None else ctx
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        q, k = q.to(v.dtype), k.to(v.dtype)  # under autocast the norms may answer in float32
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, L], True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    """One transformer block: self-attention over `kind` ("joint", "space" or "time"), cross-attention
    to the text, MLP; adaLN-Zero modulation of self-attention and MLP by the timestep."""

    def __init__(self, cfg: DiTConfig, kind: str):
        super().__init__()
        d = cfg.width
        self.kind = kind
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg.heads, qk_norm=cfg.qk_norm)
        self.norm_x = nn.LayerNorm(d, eps=1e-6)
        self.cross = Attention(d, cfg.heads, qk_norm=cfg.qk_norm)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c, grid, angles, ctx, mask):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1)
        b, n, d = h.shape
        t, hh, ww = grid
        if self.kind == "joint":
            h = self.attn(h, angles=angles)
        elif self.kind == "space":  # tokens of one frame attend to each other
            a = angles.view(t, hh * ww, -1)[0]
            h = self.attn(h.reshape(b * t, hh * ww, d), angles=a).reshape(b, n, d)
        else:  # "time": tokens at one position attend across frames
            a = angles.view(t, hh * ww, -1)[:, 0]
            h = h.view(b, t, hh * ww, d).transpose(1, 2).reshape(b * hh * ww, t, d)
            h = self.attn(h, angles=a).view(b, hh * ww, t, d).transpose(1, 2).reshape(b, n, d)
        x = x + gate1[:, None] * h
        x = x + self.cross(self.norm_x(x), ctx=ctx, mask=mask)
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class VideoDiT(nn.Module):
    """velocity = model(x_t [B, C, T, H, W], t [B], text [B, L, text_dim], mask [B, L] bool, drop [B] bool).

    `drop` (or a sample without text: give zeros and an all-False mask) uses the learned `null_text`.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d, (pt, ph, pw) = cfg.width, cfg.patch
        self.patch_dim = cfg.in_channels * pt * ph * pw
        self.embed = nn.Linear(self.patch_dim, d)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.null_text = nn.Parameter(torch.randn(1, cfg.text_dim) * 0.02)  # the learned empty-text embedding
        kinds = ["joint"] * cfg.depth if cfg.attention == "joint" else ["space" if i % 2 == 0 else "time" for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, k) for k in kinds)
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, self.patch_dim)
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
            nn.init.zeros_(blk.cross.out.weight)
        nn.init.zeros_(self.ada_out[-1].weight)
        nn.init.zeros_(self.ada_out[-1].bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def grid(self, shape) -> tuple[int, int, int]:
        _, _, t, h, w = shape
        pt, ph, pw = self.cfg.patch
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent [T, H, W] = [{t}, {h}, {w}] is not divisible by the patch {tuple(self.cfg.patch)}")
        return t // pt, h // ph, w // pw

    def patchify(self, x):
        b, c, t, h, w = x.shape
        pt, ph, pw = self.cfg.patch
        x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (t // pt) * (h // ph) * (w // pw), self.patch_dim)

    def unpatchify(self, x, shape):
        b, c, t, h, w = shape
        pt, ph, pw = self.cfg.patch
        x = x.reshape(b, t // pt, h // ph, w // pw, c, pt, ph, pw)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, t, h, w)

    def context(self, text, mask, drop):
        """Text tokens [B, L', D] and key mask: the caption's, or the null embedding where dropped / missing."""
        b = text.shape[0]
        if text.shape[1] == 0:
            text, mask = text.new_zeros(b, 1, text.shape[2]), mask.new_zeros(b, 1)
        empty = ~mask.any(dim=1)
        drop = empty if drop is None else (drop | empty)
        null = self.null_text.to(text.dtype)[None].expand(b, text.shape[1], -1)
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = True
        # torch.where keeps null_text in the graph even when no sample uses it (DDP needs every grad)
        text = torch.where(drop[:, None, None], null, text)
        mask = torch.where(drop[:, None], null_mask, mask)
        return self.text_proj(text), mask

    def forward(self, x, t, text, mask, drop=None):
        shape = x.shape
        grid = self.grid(shape)
        angles = rope_3d(grid, self.cfg.width // self.cfg.heads, self.cfg.rope_theta, x.device)
        h = self.embed(self.patchify(x))
        c = self.t_embed(timestep_embedding(t, 256).to(h.dtype))
        ctx, mask = self.context(text.to(h.dtype), mask.bool(), drop)
        for blk in self.blocks:
            h = blk(h, c, grid, angles, ctx, mask)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        h = self.out(modulate(self.norm_out(h), shift, scale))
        return self.unpatchify(h, shape)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_dict(cfg: DiTConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["patch"] = list(cfg.patch)
    return d


def from_dict(d: dict) -> DiTConfig:
    return DiTConfig(**{**d, "patch": tuple(d["patch"])})
