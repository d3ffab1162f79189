"""Latent throughput with a real-size VAE and random weights, on real clips: clips/s and frames/s.

    python -m curate.bench.latents                          # Wan 2.1 VAE; GPU: 8 clips at 81x480x832, CPU: 2 at 9x128x224
    python -m curate.bench.latents --bucket 81x480x832 --batch 2 --clips 8 --tiling
    python -m curate.bench.latents --vae-class AutoencoderKLLTXVideo --bucket 17x256x448

Builds the class's released architecture (diffusers' defaults: Wan 2.1's VAE is base_dim 96, z_dim 16,
dim_mult [1,2,4,4]) with seeded random weights through the stage's own `weights: random` path, and runs
the latents stage (`stages.latents.EncodeLatents`: decode, resample to --fps, resize, crop, encode,
write float16 .npy) over clips of ../shared/data/videos. The floor, measured in the same run, is the
part every encoder pays: decoding and resizing the same bucket frames; the ratio printed is stage time
over floor time.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import pyarrow as pa

DEFAULT_VIDEOS = ["bikes.mp4", "bigbuckbunny.mp4", "vtest.avi", "traffic_camera.mp4", "testvideo.mp4", "goldeneye-vfr-drop3.mp4"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--videos", default=os.path.join(here, "..", "..", "..", "shared", "data", "videos"))
    ap.add_argument("--vae-class", default="AutoencoderKLWan")
    ap.add_argument("--bucket", help="FRAMESxHEIGHTxWIDTH (default 81x480x832 on a GPU, 9x128x224 on the CPU)")
    ap.add_argument("--fps", type=float, default=16.0)
    ap.add_argument("--clips", type=int, help="clips to encode (default 8 on a GPU, 2 on the CPU)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--tiling", action="store_true")
    ap.add_argument("--slicing", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from stages.latents import EncodeLatents, LatentsConfig, load_vae, read_bucket_frames
    from stages.media import probe

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.bucket = args.bucket or ("81x480x832" if cuda else "9x128x224")
    args.clips = args.clips or (8 if cuda else 2)
    f, h, w = (int(v) for v in args.bucket.split("x"))
    cfg = LatentsConfig(
        vae_class=args.vae_class, weights="random", buckets=((f, h, w),), fps=args.fps, batch_size=args.batch,
        device=args.device, dtype=args.dtype, tiling=args.tiling, slicing=args.slicing,
    )
    rows = []
    for name in DEFAULT_VIDEOS:
        path = os.path.join(args.videos, name)
        p = probe(path)
        if (p.duration_s or 0) * args.fps >= f:
            rows.append(dict(clip_id=name.replace(".", "_"), source_id=name, start_frame=0, status="kept", clip_uri=path,
                             width=p.width, height=p.height, duration_s=p.duration_s))
    rows = (rows * (args.clips // max(1, len(rows)) + 1))[: args.clips]
    for i, r in enumerate(rows):
        rows[i] = {**r, "clip_id": f"{r['clip_id']}_{i}"}
    if not rows:
        raise SystemExit(f"no video in {args.videos} is {f / args.fps:.1f} s long")

    t = time.perf_counter()
    vae = load_vae(cfg)
    load_s = time.perf_counter() - t
    params = sum(p.numel() for p in vae.model.parameters())
    print(f"{vae.cls_name} {vae.vae_id}: {params / 1e6:.1f} M parameters, {vae.device} {str(vae.dtype).replace('torch.', '')}, "
          f"threads {torch.get_num_threads()}, built in {load_s:.1f} s")
    g = vae.geometry
    print(f"bucket {f}x{h}x{w} at {args.fps:g} fps -> latent {list(g.latent_shape(f, h, w))}, {len(rows)} clips, batch {args.batch}")

    with tempfile.TemporaryDirectory(prefix="curate-bench-") as out:
        stage = EncodeLatents(cfg, out, vae=vae)
        table = pa.Table.from_pylist(rows)
        if vae.device == "cuda":
            stage(table.slice(0, 1))  # warm-up (kernels, allocator); on the CPU it would only double the run
        t = time.perf_counter()
        result = stage(table)
        total_s = time.perf_counter() - t
        encoded = sum(1 for u in result["latent_uri"].to_pylist() if u)
    t = time.perf_counter()
    for r in rows:
        read_bucket_frames(r["clip_uri"], f, h, w, args.fps)
    floor_s = time.perf_counter() - t

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = f", GPU peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if vae.device == "cuda" else ""
    print(f"latents: {encoded} clips in {total_s:.2f} s = {encoded / total_s:.3f} clips/s, {encoded * f / total_s:.1f} frames/s"
          f" (peak RSS {peak:.0f} MiB{gpu})")
    print(f"floor (decode + resize the same frames): {floor_s:.2f} s = {len(rows) * f / floor_s:.1f} frames/s")
    print(f"ratio stage / floor: {total_s / floor_s:.1f}x")


if __name__ == "__main__":
    main()
