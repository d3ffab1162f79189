"""Training throughput of the reference trainer's model: tokens/s, achieved FLOP/s and MFU.

    python -m curate.bench.train --size B                 # GPU: bf16 autocast, Wan 2.1 latents of 33x480x832
    python -m curate.bench.train --size tiny              # CPU: a quick check of the same path
    python -m curate.bench.train --size B --latent 16x21x60x104 --batch 2 --compile

One training step is what `curate train` does (curate/train/loop.py): rectified-flow loss, backward,
gradient clipping, fused AdamW on a GPU, EMA; on synthetic latents and text embeddings of the given
shapes (no data loading: the shards' reader is not what this measures). FLOPs per step are counted by
torch's FlopCounterMode (matmuls and attention, forward + backward). Printed as JSON: tokens/s, achieved
TFLOP/s, MFU against the device's dense bf16 peak (loop.PEAK_TFLOPS, or --peak-tflops), and the ratio to
the floor measured in the same run: a square matmul in the same dtype on the same device.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(measure(argv), indent=1))
    return 0


def measure(argv: list[str] | None = None) -> dict:
    """The figures `main` prints, as a dict (curate.bench.gpu calls this)."""
    import torch

    from curate.bench.caption import matmul_rate
    from curate.train import flow
    from curate.train.loop import ema_update, peak_flops, step_flops
    from curate.train.model import VideoDiT, config_for, count_params

    p = argparse.ArgumentParser(prog="python -m curate.bench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["tiny", "S", "B"], default="B")
    p.add_argument("--latent", help="CxTxHxW of one latent (default: GPU 16x9x60x104, Wan 2.1 at 33x480x832; CPU 4x3x8x8)")
    p.add_argument("--batch", type=int, help="latents per step (default: GPU 4, CPU 2)")
    p.add_argument("--text", default=None, help="LxD of the text embeddings (default: GPU 512x4096, umT5; CPU 16x32)")
    p.add_argument("--attention", choices=["joint", "factorized"], default="joint")
    p.add_argument("--steps", type=int, help="timed steps (default: GPU 20, CPU 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on the GPU")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: known GPUs' dense bf16 peak)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when there is a GPU")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    c, t, h, w = map(int, (args.latent or ("16x9x60x104" if cuda else "4x3x8x8")).split("x"))
    length, text_dim = map(int, (args.text or ("512x4096" if cuda else "16x32")).split("x"))
    batch, steps = args.batch or (4 if cuda else 2), args.steps or (20 if cuda else 3)
    bf16 = cuda and not args.fp32

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    torch.manual_seed(0)
    mcfg = config_for(args.size, in_channels=c, text_dim=text_dim, attention=args.attention)
    model = VideoDiT(mcfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda or None)
    net = torch.compile(model) if args.compile else model
    x = torch.randn(batch, c, t, h, w, device=device)
    text = torch.randn(batch, length, text_dim, device=device)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    tokens = batch * math.prod(model.grid(x.shape))
    flops = step_flops(model, x, text, mask, autocast)

    def step():
        tt = flow.sample_t(batch, device=device)
        with autocast():
            loss = flow.flow_loss(net, x, torch.randn_like(x), tt, text=text, mask=mask, drop=torch.rand(batch, device=device) < 0.1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, model, 0.999)

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    floor = matmul_rate(torch, device.type, torch.bfloat16 if bf16 else torch.float32, n=8192 if cuda else 1024)
    peak = peak_flops(device, args.peak_tflops)
    achieved = flops / seconds
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "size": args.size, "params_m": round(count_params(model) / 1e6, 2),
        "attention": args.attention, "latent": [c, t, h, w], "batch": batch, "tokens_per_sample": tokens // batch,
        "text": [length, text_dim], "dtype": "bf16 autocast" if bf16 else "float32", "compile": args.compile,
        "step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1), "tflop_per_step": round(flops / 1e12, 4),
        "achieved_tflops": round(achieved / 1e12, 3), "mfu": round(achieved / peak, 4) if peak else None,
        "peak_tflops": peak / 1e12 if peak else None, "matmul_floor_tflops": round(floor / 1e12, 3),
        "ratio_of_matmul_floor": round(achieved / floor, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


if __name__ == "__main__":
    raise SystemExit(main())
