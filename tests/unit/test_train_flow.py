"""Rectified flow's math: the Euler sampler on the true velocity field, and what the loss can reach at t -> 0 and t -> 1."""

import pytest
import torch

from curate.train import flow


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (8, 1.0), (25, 3.0)])
def test_euler_with_the_true_velocity_field_lands_on_the_data_point(steps, shift):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)

    # one data point: x_t = (1 - t) x0 + t e, so e = (x_t - (1 - t) x0) / t and v = e - x0 = (x_t - x0) / t
    def true_field(x, t):
        return (x - x0) / t.view(-1, 1, 1, 1, 1)

    out = flow.euler_sample(true_field, noise, steps=steps, shift=shift)
    assert torch.allclose(out, x0, atol=1e-9)
    # a wrong field does not land there (the check can fail)
    bad = flow.euler_sample(lambda x, t: 0.9 * true_field(x, t), noise, steps=steps, shift=shift)
    assert (bad - x0).abs().max() > 1e-3


def gaussian_field(mu: float, sigma: float):
    """E[v | x_t] when x0 ~ N(mu, sigma^2) per element: the best possible model (closed form)."""

    def field(x, t, **_):
        tt = t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        var = (1 - tt) ** 2 * sigma**2 + tt**2  # Var(x_t)
        cov = tt - (1 - tt) * sigma**2  # Cov(v, x_t), v = e - x0
        return -mu + cov / var * (x - (1 - tt) * mu)

    return field


def best_loss(t: float, sigma: float) -> float:
    """Var(v) - Cov(v, x_t)^2 / Var(x_t): the irreducible loss per element at t."""
    return 1 + sigma**2 - (t - (1 - t) * sigma**2) ** 2 / ((1 - t) ** 2 * sigma**2 + t**2)


@pytest.mark.parametrize("t,expect", [(1e-3, "noise"), (0.5, "between"), (1 - 1e-3, "data")])
def test_loss_of_the_best_model_is_what_the_objective_says(t, expect):
    mu, sigma = 0.7, 0.5
    g = torch.Generator().manual_seed(1)
    x0 = mu + sigma * torch.randn(4096, 64, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    tt = torch.full((x0.shape[0],), t, dtype=torch.float64)
    loss = flow.flow_loss(gaussian_field(mu, sigma), x0, noise, tt).mean().item()
    assert loss == pytest.approx(best_loss(t, sigma), rel=0.02)
    if expect == "noise":  # near t = 0 the noise cannot be known: about its variance, 1 per element
        assert loss == pytest.approx(1.0, rel=0.02)
    elif expect == "data":  # near t = 1 the data cannot be known: about its variance around its mean
        assert loss == pytest.approx(sigma**2, rel=0.03)
    # any other model does worse: predicting zero costs E[(e - x0)^2] = 1 + sigma^2 + mu^2
    zero = flow.flow_loss(lambda x, t: torch.zeros_like(x), x0, noise, tt).mean().item()
    assert zero == pytest.approx(1 + sigma**2 + mu**2, rel=0.02) and zero > loss


def test_timesteps_are_logit_normal_and_shifted():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_t(200_000, g)
    assert 0 < t.min() and t.max() < 1
    assert t.median().item() == pytest.approx(0.5, abs=0.01)
    logit = torch.log(t / (1 - t))
    assert logit.std().item() == pytest.approx(1.0, rel=0.02)
    shifted = flow.sample_t(200_000, torch.Generator().manual_seed(0), shift=3.0)
    assert shifted.median().item() == pytest.approx(3 * 0.5 / (1 + 2 * 0.5), abs=0.01)  # 0.75: towards the noise
    ts = flow.timesteps(10, shift=3.0)
    assert ts[0] == 1 and ts[-1] == 0 and bool((ts[1:] < ts[:-1]).all())


def test_guidance_mixes_conditional_and_unconditional_velocity():
    def model(x, t, text, mask, drop):  # conditional: +1, unconditional: -1 (per sample)
        return torch.where(drop.view(-1, 1), -torch.ones_like(x), torch.ones_like(x))

    x, t = torch.zeros(2, 3), torch.full((2,), 0.5)
    text, mask = torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool)
    assert torch.equal(flow.guided(model, text, mask, 1.0)(x, t), torch.ones(2, 3))
    g = 4.0
    assert torch.allclose(flow.guided(model, text, mask, g)(x, t), torch.full((2, 3), -1 + g * 2))
