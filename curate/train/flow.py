"""Rectified flow (flow matching with straight paths), as in SD3 / Wan.

    x_t = (1 - t) x_0 + t e          t = 0: the data latent x_0, t = 1: the noise e ~ N(0, I)
    v   = e - x_0                    the velocity the model learns: d x_t / d t
    loss = mean (model(x_t, t) - v)^2

t is drawn logit-normal (sigmoid of N(mean, std)), which puts most training on the middle of the
path, then optionally shifted towards the noise end, t' = s t / (1 + (s - 1) t) (s > 1 for bigger
latents). What the loss can reach: the best predictor is E[v | x_t], and its error is what cannot be
learnt. Near t = 1, x_t is almost pure noise, so x_0 is unknown and the error is the data's variance
around its mean; near t = 0, x_t is almost the data, so the noise e is unknown and the error is about
the noise's variance, 1 per element, for data with a density (a handful of memorised points can be
told apart, so an overfitted model gets below that everywhere but at the smallest t).

Sampling integrates dx/dt = v from t = 1 (noise) to t = 0 with Euler steps on the same shifted
schedule; classifier-free guidance mixes the conditional and the unconditional velocity,
v = v_uncond + g (v_cond - v_uncond).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Move t towards 1 (more noise) for shift > 1: s t / (1 + (s - 1) t)."""
    return t if shift == 1.0 else shift * t / (1.0 + (shift - 1.0) * t)


def sample_t(n: int, generator: torch.Generator | None = None, mean: float = 0.0, std: float = 1.0,
             shift: float = 1.0, device="cpu") -> torch.Tensor:
    """n timesteps in (0, 1): logit-normal(mean, std), then shifted."""
    u = torch.randn(n, generator=generator, device="cpu") * std + mean
    return shift_t(torch.sigmoid(u), shift).to(device)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tt = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1.0 - tt) * x0 + tt * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_loss(model: Callable, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
    """Per-sample rectified-flow loss [B] (mean over the latent's elements) at given noise and t."""
    pred = model(interpolate(x0, noise, t), t, **cond)
    return (pred.float() - velocity_target(x0, noise).float()).pow(2).flatten(1).mean(1)


def timesteps(steps: int, shift: float = 1.0, device="cpu") -> torch.Tensor:
    """steps + 1 times from 1 down to 0 (shifted like training's t)."""
    return shift_t(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


@torch.no_grad()
def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                 steps: int = 50, shift: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 1 (x = noise) to t = 0 with `steps` Euler steps."""
    ts = timesteps(steps, shift, noise.device)
    x = noise
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        v = velocity(x, t.expand(x.shape[0]))
        x = x + (t_next - t) * v.to(x.dtype)
    return x


def guided(model: Callable, text: torch.Tensor, mask: torch.Tensor, guidance: float = 1.0):
    """velocity(x, t) for euler_sample: the model conditioned on text, with classifier-free guidance
    against the learned empty-text embedding (one batched call for both when guidance != 1)."""
    b = text.shape[0]

    def velocity(x, t):
        if guidance == 1.0:
            return model(x, t, text, mask, drop=torch.zeros(b, dtype=torch.bool, device=x.device))
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, text]), torch.cat([mask, mask]), drop=drop)
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    return velocity
