"""The network's plumbing: shapes, adaLN-Zero start, the empty-text embedding, 3D rotary positions."""

import pytest
import torch

from curate.train.model import DiTConfig, VideoDiT, apply_rope, config_for, rope_3d


def inputs(b=2, shape=(4, 3, 4, 6), text_dim=8, length=5):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, *shape, generator=g), torch.rand(b, generator=g),
            torch.randn(b, length, text_dim, generator=g), torch.ones(b, length, dtype=torch.bool))


@pytest.mark.parametrize("attention", ["joint", "factorized"])
def test_shapes_and_zero_start(attention):
    model = VideoDiT(config_for("tiny", in_channels=4, text_dim=8, attention=attention, depth=2))
    x, t, text, mask = inputs()
    out = model(x, t, text, mask)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # adaLN-Zero: the output starts at 0
    assert torch.equal(model.unpatchify(model.patchify(x), x.shape), x)
    with torch.no_grad():  # once trained (here: perturbed), text and the empty-text embedding matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a = model(x, t, text, mask)
    b = model(x, t, text, torch.zeros_like(mask))  # no text: the learned empty-text embedding
    c = model(x, t, text, mask, drop=torch.ones(2, dtype=torch.bool))  # caption dropped: the same
    assert torch.allclose(b, c, atol=1e-6) and not torch.allclose(a, b, atol=1e-4)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of heads"):
        DiTConfig(width=65, heads=4)
    model = VideoDiT(config_for("tiny", in_channels=4, text_dim=8))
    x, t, text, mask = inputs(shape=(4, 3, 5, 6))
    with pytest.raises(ValueError, match="not divisible by the patch"):
        model(x, t, text, mask)


def test_rotary_attention_scores_depend_on_relative_position_only():
    angles = rope_3d((4, 3, 5), 24, 10000.0, "cpu").view(4, 3, 5, -1)
    q, k = torch.randn(24), torch.randn(24)

    def score(p, r):
        qa = apply_rope(q.view(1, 1, 1, -1), angles[p].view(1, -1))
        ka = apply_rope(k.view(1, 1, 1, -1), angles[r].view(1, -1))
        return (qa * ka).sum().item()

    assert score((1, 0, 1), (2, 1, 3)) == pytest.approx(score((2, 1, 2), (3, 2, 4)), abs=1e-4)  # same offset
    assert score((1, 0, 1), (2, 1, 3)) != pytest.approx(score((1, 0, 1), (3, 1, 3)), abs=1e-3)  # time offset matters
    assert score((0, 0, 0), (0, 2, 0)) != pytest.approx(score((0, 0, 0), (0, 0, 2)), abs=1e-3)  # height and width differ


@pytest.mark.parametrize("attention", ["joint", "factorized"])
def test_bf16_autocast_forward_and_backward(attention):
    """What a GPU run does (bf16 autocast, float32 weights), on the CPU's autocast."""
    model = VideoDiT(config_for("tiny", in_channels=4, text_dim=8, attention=attention))
    x, t, text, mask = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, text, mask, drop=torch.tensor([True, False]))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
