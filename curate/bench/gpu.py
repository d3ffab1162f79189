"""One command that measures every GPU path, with real architecture sizes and random weights.

    python -m curate.bench.gpu               # one H100/H200-class GPU, about 4-6 minutes: one JSON object
    python -m curate.bench.gpu --dry-run     # tiny sizes on the CPU in well under a minute: every key, CPU figures

Each figure stands beside its floor or ceiling, measured in the same run on the same device, and its
target where the project has one:

    caption  Qwen2.5-VL-3B-Instruct's shape, random weights, through the caption stage's own model class
             (transformers; vLLM in a child process when it is installed): output tokens/s and clips/s at a
             fixed output length, the share of the time the GPU was busy (NVML), and the achieved FLOP rate
             over a bf16 square matmul's rate.                           target >= 3,000 output tokens/s
    clip     CLIP ViT-L-14 (open_clip) image embeddings/s as the aesthetic scorer runs it (float32) and under
             bf16 autocast, each over the matmul rate
    vae      Wan 2.1's VAE (diffusers AutoencoderKLWan, released size) through the latents stage's VAE
             class, bf16: clips/s of a 33x480x832 bucket, and its FLOP rate's share of a conv3d's rate
                                                                          target >= 50 % of the conv3d rate
    train    the reference trainer's size B, bf16 autocast: one training step's MFU (curate.bench.train)
                                                                          target >= 40 % MFU
    video    ffmpeg: NVENC (h264_nvenc) against libx264 (the split's encoder and preset), NVDEC
             (-hwaccel cuda) against the CPU decoder, on the same 720p input; "available": false without them

A section that fails reports {"error": ...} and the others still run; a section that would not fit
the time budget (--budget-s) is reported {"skipped": ...}. GPU timings synchronise the device, follow a
warm-up, and use bf16 where the stage does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

TARGETS = {"caption_output_tokens_per_s": 3000, "train_mfu": 0.40, "vae_share_of_conv3d": 0.50}

# Sizes per mode: the GPU run uses the real shapes; --dry-run tiny ones that run on the CPU in seconds.
GPU = dict(caption=dict(size="3b", clips=64, batch=32, tokens=128, frames=8, frame_size=448),
           clip=dict(model="ViT-L-14", batch=128, iters=6),
           vae=dict(size="full", bucket=(33, 480, 832), clips=3, conv=[(384, 9, 60, 104), (192, 9, 120, 208)]),
           train=["--size", "B", "--steps", "10", "--warmup", "3"],
           video=dict(size="1280x720", seconds=8))  # fmt: skip
DRY = dict(caption=dict(size="tiny", clips=4, batch=2, tokens=8, frames=2, frame_size=112),
           clip=dict(model="tiny", batch=8, iters=2),
           vae=dict(size="tiny", bucket=(9, 32, 48), clips=2, conv=[(16, 3, 16, 16)]),
           train=["--size", "tiny", "--steps", "2", "--warmup", "1", "--cpu"],
           video=dict(size="160x120", seconds=1))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m curate.bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks every path and key in seconds")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip what would run past this many seconds (default 450)")
    p.add_argument("--only", action="append", choices=["caption", "clip", "vae", "train", "video"], help="run only these sections")
    p.add_argument("--no-vllm", action="store_true", help="skip the vLLM caption run even when vLLM is installed")
    p.add_argument("--vllm-worker", help=argparse.SUPPRESS)  # internal: the child process of the vLLM run
    args = p.parse_args(argv)
    if args.vllm_worker:
        print(json.dumps(_vllm_worker(json.loads(args.vllm_worker))))
        return 0

    import torch

    t0 = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.dry_run
    device = "cuda" if cuda else "cpu"
    sizes = GPU if cuda else DRY
    report: dict = {
        "mode": "gpu" if cuda else "dry-run (cpu, tiny sizes)",
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
        "targets": TARGETS,
    }  # fmt: skip
    # (section, seconds it needs at most on the GPU: run only when that much budget is left). vLLM comes
    # last, in a child process given what is left of the budget, so that it cannot starve the others.
    plan = [("caption", 120), ("clip", 30), ("vae", 60), ("train", 60), ("video", 45)]
    with tempfile.TemporaryDirectory(prefix="curate-bench-gpu-") as folder:  # the caption model's config and processor
        for name, need in plan:
            if args.only and name not in args.only:
                continue
            left = args.budget_s - (time.perf_counter() - t0)
            if cuda and left < need:
                report[name] = {"skipped": f"{left:.0f} s of the budget left, needs about {need} s"}
                continue
            fn = {"caption": bench_caption, "clip": bench_clip, "vae": bench_vae, "train": bench_train, "video": bench_video}[name]
            t = time.perf_counter()
            try:
                report[name] = fn(torch, device, sizes[name], folder) if name == "caption" else fn(torch, device, sizes[name])
            except Exception as e:  # noqa: BLE001 - one broken path must not hide the others' figures
                report[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)[-800:]}
            report[name]["section_s"] = round(time.perf_counter() - t, 1)
            if cuda:
                torch.cuda.empty_cache()
        if "transformers" in report.get("caption", {}):
            t = time.perf_counter()
            left = args.budget_s - (t - t0)
            report["caption"]["vllm"] = {"skipped": "--no-vllm"} if args.no_vllm else bench_vllm(folder, sizes["caption"], device, left)
            report["caption"]["vllm"]["section_s"] = round(time.perf_counter() - t, 1)
    report["summary"] = summary(report)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))
    return 0


def summary(r: dict) -> dict:
    """The headline figures against their targets (None where a section did not run)."""
    cap = r.get("caption", {}).get("transformers", {})
    vllm = r.get("caption", {}).get("vllm", {})
    best = max([x for x in (cap.get("output_tokens_per_s"), vllm.get("output_tokens_per_s")) if x is not None], default=None)
    vae = r.get("vae", {}).get("share_of_conv3d")
    mfu = r.get("train", {}).get("mfu")
    return {
        "caption_output_tokens_per_s": best,
        "caption_meets_target": None if best is None else best >= TARGETS["caption_output_tokens_per_s"],
        "vae_share_of_conv3d": vae, "vae_meets_target": None if vae is None else vae >= TARGETS["vae_share_of_conv3d"],
        "train_mfu": mfu, "train_meets_target": None if mfu is None else mfu >= TARGETS["train_mfu"],
    }  # fmt: skip


# ------------------------------------------------------------------------------------------- helpers


def sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(torch, device: str, dtype, n: int) -> float:
    """TFLOP/s of a square matmul (the dense ceiling every model below is compared against)."""
    from curate.bench.caption import matmul_rate

    return matmul_rate(torch, device, dtype, n=n, reps=10 if device == "cuda" else 3) / 1e12


def count_flops(fn) -> int:
    """FLOPs of one call of `fn` (torch's FlopCounterMode: matmuls, attention, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class GpuBusy:
    """Share of wall time the GPU was busy (NVML utilization: the share of each sample period in which a
    kernel ran), sampled every 100 ms while the block runs: torch.cuda.utilization, else nvidia-smi."""

    def __init__(self, torch, device: str):
        self.torch, self.on, self.samples, self.source = torch, device == "cuda", [], None

    def __enter__(self):
        if not self.on:
            return self
        self.stop = threading.Event()
        try:
            self.torch.cuda.utilization()
            self.source = "nvml"
        except Exception:  # noqa: BLE001 - pynvml missing: nvidia-smi instead
            self.source = "nvidia-smi" if shutil.which("nvidia-smi") else None
        if self.source == "nvml":
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        elif self.source == "nvidia-smi":
            idx = str(self.torch.cuda.current_device())
            self.proc = subprocess.Popen(["nvidia-smi", "-i", idx, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "100"], stdout=subprocess.PIPE, text=True)  # fmt: skip
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while not self.stop.is_set():
            self.samples.append(float(self.torch.cuda.utilization()))
            time.sleep(0.1)

    def _read(self):
        for line in self.proc.stdout:
            if self.stop.is_set():
                break
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.on and self.source:
            self.stop.set()
            if self.source == "nvidia-smi":
                self.proc.terminate()
                self.proc.wait()
            self.thread.join(timeout=2)

    @property
    def share(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def synthetic_frames(n: int, size: int, seed: int) -> list[np.ndarray]:
    """`n` RGB frames 16:9 (longer side `size`) of a moving pattern: what the processor gets from a clip."""
    rng = np.random.default_rng(seed)
    h, w = (size * 9 // 16) // 2 * 2, size
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 7 * i, axis=1) for i in range(n)]


# ------------------------------------------------------------------------------------------- caption


def bench_caption(torch, device: str, s: dict, folder: str) -> dict:
    """The caption stage's TransformersVLM on a model written to `folder` (config, tokenizer, processor;
    random weights), forced to `tokens` output tokens per clip, `batch` clips per generate() call."""
    from curate.bench.caption import write_model
    from curate.tiny import write_tiny_vlm
    from stages.caption import CaptionConfig, Decoding, TransformersVLM

    out: dict = {"shape": "Qwen2.5-VL-3B-Instruct" if s["size"] == "3b" else "tiny Qwen2-VL", **s}
    # the folder outlives this section: bench_vllm loads the same shape from it
    t = time.perf_counter()
    if s["size"] == "tiny":
        write_tiny_vlm(folder)
    else:
        write_model(folder, s["size"])
    cfg = CaptionConfig(model=folder, weights="random", frames=s["frames"], frame_size=s["frame_size"],
                        max_new_tokens=s["tokens"], batch_size=s["batch"], device=device)  # fmt: skip
    vlm = TransformersVLM(cfg)
    model = vlm.load()
    dtype = next(model.parameters()).dtype
    n_params = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for p in model.model.visual.parameters())
    build_s = time.perf_counter() - t

    frames = [synthetic_frames(s["frames"], s["frame_size"], i) for i in range(s["clips"])]
    prompts = [f"{cfg.text} (clip {i})" for i in range(s["clips"])]  # distinct prompts, as distinct clips give
    t = time.perf_counter()
    items = [vlm.prepare(f, p) for f, p in zip(frames, prompts)]
    prep_s = time.perf_counter() - t
    prompt_tokens = sum(int(it["input_ids"].shape[1]) for it in items)
    patches = sum(int(it["pixel_values_videos"].shape[0]) for it in items if "pixel_values_videos" in it)

    vlm.generate(items[: s["batch"]], Decoding(max_new_tokens=2))  # warm-up: kernels, allocator
    model.generation_config.min_new_tokens = s["tokens"]  # a fixed output length: no early end
    sync(torch, device)
    results = []
    with GpuBusy(torch, device) as busy:
        t = time.perf_counter()
        for i in range(0, len(items), s["batch"]):
            results += vlm.generate(items[i : i + s["batch"]], Decoding(max_new_tokens=s["tokens"]))
        sync(torch, device)
        gen_s = time.perf_counter() - t
    out_tokens = sum(g.n_tokens for g in results)
    # 2 FLOPs per parameter per token (prompt + output) in the language model, per patch in the vision tower
    flops = 2 * (n_params - n_vision) * (prompt_tokens + out_tokens) + 2 * n_vision * patches
    ceiling = matmul_tflops(torch, device, dtype, 8192 if device == "cuda" else 512)
    out["transformers"] = {
        "params_m": round(n_params / 1e6, 1), "dtype": str(dtype).replace("torch.", ""), "build_s": round(build_s, 1),
        "prompt_tokens_per_clip": round(prompt_tokens / len(items), 1), "prep_clips_per_s": round(len(items) / prep_s, 2),
        "generate_s": round(gen_s, 2), "clips_per_s": round(len(items) / gen_s, 3),
        "output_tokens_per_s": round(out_tokens / gen_s, 1), "gpu_busy_share": busy.share, "gpu_busy_source": busy.source,
        "achieved_tflops": round(flops / gen_s / 1e12, 4), "matmul_ceiling_tflops": round(ceiling, 3),
        "share_of_matmul_ceiling": round(flops / gen_s / 1e12 / ceiling, 4),
        "all_reached_fixed_length": all(g.n_tokens == s["tokens"] for g in results),
    }  # fmt: skip
    del model, vlm
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_vllm(folder: str, s: dict, device: str, left: float) -> dict:
    """The same shape and inputs through vLLM (load_format=dummy: random weights), in a child process so
    that its engine, memory and any failure stay there; given `left` seconds at most (capped at 240)."""
    if device != "cuda":
        return {"skipped": "vLLM runs on a GPU only"}
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vLLM is not installed (pip install vllm)"}
    left = min(240.0, left)
    if left < 90:
        return {"skipped": f"{left:.0f} s of the budget left, vLLM needs about 90 s"}
    cmd = [sys.executable, "-m", "curate.bench.gpu", "--vllm-worker", json.dumps({"folder": folder, **s})]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        return {"error": f"vLLM did not finish within {left:.0f} s"}
    lines = [x for x in run.stdout.splitlines() if x.startswith("{")]
    if run.returncode != 0 or not lines:
        return {"error": (run.stderr or run.stdout)[-1500:]}
    return json.loads(lines[-1])


def _vllm_worker(s: dict) -> dict:
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    processor = AutoProcessor.from_pretrained(s["folder"])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe this video."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    t = time.perf_counter()
    llm = LLM(s["folder"], load_format="dummy", dtype="bfloat16", seed=0, max_model_len=8192, gpu_memory_utilization=0.6,
              limit_mm_per_prompt={"video": 1})  # fmt: skip
    build_s = time.perf_counter() - t
    # a fixed output length: EOS ignored, no detokenisation (the random model's ids span the whole vocabulary)
    params = SamplingParams(max_tokens=s["tokens"], min_tokens=s["tokens"], ignore_eos=True, detokenize=False, temperature=0.0)
    reqs = [{"prompt": text, "multi_modal_data": {"video": np.stack(synthetic_frames(s["frames"], s["frame_size"], i))}}
            for i in range(s["clips"])]  # fmt: skip
    llm.generate(reqs[:2], SamplingParams(max_tokens=2, detokenize=False), use_tqdm=False)  # warm-up
    t = time.perf_counter()
    outs = llm.generate(reqs, params, use_tqdm=False)
    gen_s = time.perf_counter() - t
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"build_s": round(build_s, 1), "generate_s": round(gen_s, 2), "clips_per_s": round(len(reqs) / gen_s, 3),
            "output_tokens_per_s": round(n / gen_s, 1), "prompt_tokens_per_clip": round(sum(len(o.prompt_token_ids) for o in outs) / len(outs), 1)}  # fmt: skip


# ------------------------------------------------------------------------------------------- CLIP


def bench_clip(torch, device: str, s: dict) -> dict:
    import open_clip

    from curate.tiny import TINY_CLIP

    if s["model"] == "tiny":
        model = open_clip.CLIP(**TINY_CLIP["model_cfg"])
        size = TINY_CLIP["model_cfg"]["vision_cfg"]["image_size"]
    else:
        model = open_clip.create_model(s["model"], pretrained=None)  # random weights, the released architecture
        size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    model = model.to(device).eval()
    x = torch.randn(s["batch"], 3, size, size, device=device)

    def rate(bf16: bool) -> tuple[float, float]:
        def once():
            with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                model.encode_image(x)

        once()
        sync(torch, device)
        t = time.perf_counter()
        for _ in range(s["iters"]):
            once()
        sync(torch, device)
        dt = (time.perf_counter() - t) / s["iters"]
        return s["batch"] / dt, count_flops(once) / dt / 1e12

    fp32_ips, fp32_tf = rate(False)
    bf16_ips, bf16_tf = rate(True)
    ceiling = matmul_tflops(torch, device, torch.bfloat16 if device == "cuda" else torch.float32, 8192 if device == "cuda" else 512)
    return {
        "model": s["model"], "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "image_size": size,
        "batch": s["batch"], "images_per_s_float32": round(fp32_ips, 1), "images_per_s_bf16": round(bf16_ips, 1),
        "achieved_tflops_float32": round(fp32_tf, 3), "achieved_tflops_bf16": round(bf16_tf, 3),
        "matmul_ceiling_tflops": round(ceiling, 3), "share_of_matmul_ceiling_bf16": round(bf16_tf / ceiling, 4),
        "note": "the aesthetic scorer runs CLIP in float32 (stages/aesthetic.py); the bf16 figure is what autocast would give",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------- VAE


def bench_vae(torch, device: str, s: dict) -> dict:
    from stages.latents import VAE, random_vae

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t = time.perf_counter()
    with torch.device(device):
        model = random_vae("AutoencoderKLWan", s["size"])
    vae = VAE(model, f"AutoencoderKLWan/{s['size']} (random weights)", None, device=device, dtype=dtype)
    build_s = time.perf_counter() - t
    f, h, w = s["bucket"]
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (1, f, h, w, 3), dtype=np.uint8)
    vae.encode(video)  # warm-up (cuDNN picks its algorithms)
    sync(torch, device)
    t = time.perf_counter()
    for _ in range(s["clips"]):
        mean, _ = vae.encode(video)
    sync(torch, device)
    per_clip = (time.perf_counter() - t) / s["clips"]
    x = (torch.from_numpy(video).to(device).permute(0, 4, 1, 2, 3).to(dtype) / 127.5 - 1.0)

    def once():
        with torch.inference_mode():
            vae.model.encode(x)

    flops = count_flops(once)
    achieved = flops / per_clip / 1e12
    conv = conv3d_tflops(torch, device, dtype, s["conv"])
    return {
        "vae": "AutoencoderKLWan (Wan 2.1)" if s["size"] == "full" else "AutoencoderKLWan (tiny)",
        "params_m": round(sum(p.numel() for p in vae.model.parameters()) / 1e6, 1), "dtype": str(dtype).replace("torch.", ""),
        "bucket": "x".join(map(str, s["bucket"])), "latent_shape": list(mean.shape[1:]), "build_s": round(build_s, 1),
        "clips_per_s": round(1 / per_clip, 3), "frames_per_s": round(f / per_clip, 1), "tflop_per_clip": round(flops / 1e12, 3),
        "achieved_tflops": round(achieved, 3), "conv3d_ceiling_tflops": round(conv, 3), "share_of_conv3d": round(achieved / conv, 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
    }  # fmt: skip


def conv3d_tflops(torch, device: str, dtype, shapes: list[tuple[int, int, int, int]]) -> float:
    """The best TFLOP/s of a 3x3x3 conv3d (C -> C channels, input C x T x H x W) among `shapes`: the rate
    the VAE's own convolutions could reach on this device."""
    best = 0.0
    for c, tt, h, w in shapes:
        conv = torch.nn.Conv3d(c, c, 3, padding=1, device=device, dtype=dtype)
        x = torch.randn(1, c, tt, h, w, device=device, dtype=dtype)
        with torch.inference_mode():
            conv(x)
            sync(torch, device)
            reps = 10 if device == "cuda" else 2
            t = time.perf_counter()
            for _ in range(reps):
                conv(x)
            sync(torch, device)
        dt = (time.perf_counter() - t) / reps
        best = max(best, 2 * c * c * 27 * tt * h * w / dt / 1e12)
    return best


# ------------------------------------------------------------------------------------------- trainer


def bench_train(torch, device: str, argv: list[str]) -> dict:
    from curate.bench.train import measure

    r = measure(argv)
    r["matmul_ceiling_tflops"] = r.pop("matmul_floor_tflops")
    r["share_of_matmul_ceiling"] = r.pop("ratio_of_matmul_floor")
    return r


# ------------------------------------------------------------------------------------------- video


def bench_video(torch, device: str, s: dict) -> dict:
    from stages.media import ffmpeg_exe
    from stages.split import SplitConfig

    ff = ffmpeg_exe()
    enc = SplitConfig().encode
    with tempfile.TemporaryDirectory(prefix="curate-bench-gpu-") as d:
        src = os.path.join(d, "in.mp4")
        _ffmpeg([ff, "-f", "lavfi", "-i", f"testsrc2=size={s['size']}:rate=25", "-t", str(s["seconds"]), "-c:v", "libx264",
                 "-preset", "ultrafast", "-pix_fmt", "yuv420p", src])  # fmt: skip
        frames = 25 * s["seconds"]
        out = os.path.join(d, "out.mp4")
        x264 = _ffmpeg([ff, "-i", src, "-c:v", "libx264", "-preset", enc.preset, "-crf", str(enc.crf), "-pix_fmt", "yuv420p", out])
        nvenc = _ffmpeg([ff, "-i", src, "-c:v", "h264_nvenc", "-preset", "p4", "-cq", str(enc.crf), "-pix_fmt", "yuv420p", out])
        cpu_dec = _ffmpeg([ff, "-i", src, "-f", "null", "-"])
        nvdec = _ffmpeg([ff, "-hwaccel", "cuda", "-hwaccel_output_format", "cuda", "-i", src, "-f", "null", "-"])

    def fps(r):
        return round(frames / r, 1) if isinstance(r, float) else None

    def entry(r):
        return {"available": True, "fps": fps(r)} if isinstance(r, float) else {"available": False, "error": r}

    return {
        "input": f"{s['size']} 25 fps, {frames} frames (testsrc2, H.264)",
        "encode": {"libx264": {"preset": enc.preset, "crf": enc.crf, "fps": fps(x264)}, "nvenc": entry(nvenc),
                   "nvenc_over_libx264": round(x264 / nvenc, 2) if isinstance(nvenc, float) and isinstance(x264, float) else None},
        "decode": {"cpu": {"fps": fps(cpu_dec)}, "nvdec": entry(nvdec),
                   "nvdec_over_cpu": round(cpu_dec / nvdec, 2) if isinstance(nvdec, float) and isinstance(cpu_dec, float) else None},
    }  # fmt: skip


def _ffmpeg(cmd: list[str]) -> float | str:
    """Wall seconds of the command, or the last line of its error output when it fails."""
    t = time.perf_counter()
    run = subprocess.run([cmd[0], "-v", "error", "-y", *cmd[1:]], capture_output=True, text=True)
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines()
        return " | ".join(lines[:2] + lines[-1:] if len(lines) > 3 else lines)[-500:] or "failed"
    return time.perf_counter() - t


if __name__ == "__main__":
    raise SystemExit(main())
