"""Caption throughput with a model of a real size and random weights: clips/s and output tokens/s.

    python -m curate.bench.caption                                  # Qwen2.5-VL-3B shape, GPU bf16 if there is one
    python -m curate.bench.caption --size small --clips 4 --tokens 16  # a ~0.3 B shape, quick on CPU

Builds the configuration (Qwen2.5-VL-3B-Instruct's published shape, or a smaller one), writes it with a
locally built tokenizer and processor to a temporary folder, and loads it through the caption stage's
own `weights: random` path (`stages.caption.TransformersVLM`). Every caption is forced to exactly
`--tokens` output tokens (min = max new tokens). Real clips from ../shared/data/videos are prepared on
the CPU (decode, resize, processor), then generated `--batch` at a time. The floor, measured in the same
run, is the device's own matrix rate (a square matmul in the model's dtype): the ratio printed is the
share of it the generation achieves, counting 2 FLOPs per parameter per token.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# Qwen/Qwen2.5-VL-3B-Instruct's config.json (its published shape); "small" keeps the layout, shrinks it.
SIZES = {
    "3b": dict(
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, mrope=[16, 24, 24], tie=True),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, fullatt_block_indexes=[7, 15, 23, 31]),
    ),
    "small": dict(
        text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, mrope=[8, 12, 12], tie=True),  # head_dim 64: sections sum to 32
        vision=dict(depth=8, hidden_size=640, intermediate_size=1710, num_heads=10, fullatt_block_indexes=[3, 7]),
    ),
}  # fmt: skip
VOCAB = 151936  # Qwen2.5's vocabulary size (the embedding and output layer cost what they cost in the real model)
DEFAULT_VIDEOS = ["bikes.mp4", "bigbuckbunny.mp4", "vtest.avi", "traffic_camera.mp4", "testvideo.mp4", "goldeneye-vfr-drop3.mp4"]


def write_model(folder: str, size: str) -> None:
    """config.json (no weights) + a local tokenizer and a Qwen2-VL processor with default pixel limits."""
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from curate.tiny import CHAT_TEMPLATE, write_tiny_vlm

    tiny = os.path.join(folder, "_tiny")
    write_tiny_vlm(tiny)  # for its tokenizer (token ids are valid in any larger vocabulary)
    tok = AutoProcessor.from_pretrained(tiny).tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|image_pad|>",
                                                      "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}  # fmt: skip
    s = SIZES[size]
    t, v = s["text"], s["vision"]
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
            num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
            num_key_value_heads=t["num_key_value_heads"], max_position_embeddings=32768, tie_word_embeddings=t["tie"],
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": t["mrope"]},
            bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=v["depth"], hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
                           num_heads=v["num_heads"], out_hidden_size=t["hidden_size"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112, fullatt_block_indexes=v["fullatt_block_indexes"],
                           tokens_per_second=2, in_chans=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=t["tie"],
    )  # fmt: skip
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]  # what vLLM picks its model class by
    cfg.save_pretrained(folder)
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(), tokenizer=tok,
                     chat_template=CHAT_TEMPLATE).save_pretrained(folder)  # fmt: skip


def matmul_rate(torch, device: str, dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a square matmul in the model's dtype: the floor the generation is compared against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(torch, device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(torch, device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m curate.bench.caption", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="3b")
    p.add_argument("--clips", type=int, default=None, help="clips to caption (default: 32 on GPU, 2 on CPU)")
    p.add_argument("--tokens", type=int, default=None, help="output tokens per caption, forced (default: 128 on GPU, 8 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="clips per generate() call (default: 16 on GPU, 2 on CPU)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--frame-size", type=int, default=448, help="longer side of each frame, pixels")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    p.add_argument("--videos", default=None, help="folder of videos (default: ../shared/data/videos)")
    args = p.parse_args(argv)

    import torch

    from stages.caption import CaptionConfig, Decoding, TransformersVLM, sample_frames

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    clips = args.clips or (32 if gpu else 2)
    tokens = args.tokens or (128 if gpu else 8)
    batch = args.batch or (16 if gpu else 2)
    videos = Path(args.videos) if args.videos else Path(__file__).resolve().parents[2].parent / "shared" / "data" / "videos"
    files = [videos / n for n in DEFAULT_VIDEOS if (videos / n).exists()] or sorted(videos.glob("*.mp4"))
    if not files:
        raise SystemExit(f"no videos under {videos}; pass --videos DIR")

    with tempfile.TemporaryDirectory(prefix="curate-bench-") as folder:
        t0 = time.perf_counter()
        write_model(folder, args.size)
        cfg = CaptionConfig(model=folder, weights="random", frames=args.frames, frame_size=args.frame_size,
                            max_new_tokens=tokens, batch_size=batch, dtype=args.dtype)  # fmt: skip
        vlm = TransformersVLM(cfg)
        model = vlm.load()
        model.generation_config.min_new_tokens = tokens  # forced output length: no early end
        build_s = time.perf_counter() - t0
        n_params = sum(p.numel() for p in model.parameters())
        n_vision = sum(p.numel() for p in model.model.visual.parameters())
        dtype = next(model.parameters()).dtype

        t = time.perf_counter()
        items = []
        for i in range(clips):
            f = files[i % len(files)]
            frames = sample_frames(str(f), args.frames, args.frame_size, 60 + 7 * i)  # other frames per clip
            items.append(vlm.prepare(frames, cfg.text))
        prep_s = time.perf_counter() - t
        prompt_tokens = sum(int(it["input_ids"].shape[1]) for it in items)
        patches = sum(int(it["pixel_values_videos"].shape[0]) for it in items if "pixel_values_videos" in it)

        vlm.generate(items[: min(batch, len(items))], Decoding(max_new_tokens=2))  # warm-up (kernels, allocator)
        _sync(torch, device)
        t = time.perf_counter()
        out = []
        for s in range(0, len(items), batch):
            out += vlm.generate(items[s : s + batch], Decoding(max_new_tokens=tokens))
        _sync(torch, device)
        gen_s = time.perf_counter() - t
        out_tokens = sum(g.n_tokens for g in out)

        floor = matmul_rate(torch, device, dtype)
        flops = 2 * (n_params - n_vision) * (prompt_tokens + out_tokens) + 2 * n_vision * patches
        report = {
            "device": torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)",
            "size": args.size, "params_b": round(n_params / 1e9, 3), "dtype": str(dtype).replace("torch.", ""),
            "clips": clips, "batch": batch, "frames": args.frames, "frame_size": args.frame_size,
            "prompt_tokens_per_clip": round(prompt_tokens / clips, 1), "output_tokens_per_clip": tokens,
            "build_s": round(build_s, 1), "prep_s": round(prep_s, 2), "generate_s": round(gen_s, 2),
            "clips_per_s": round(clips / gen_s, 3), "output_tokens_per_s": round(out_tokens / gen_s, 2),
            "prep_clips_per_s": round(clips / prep_s, 2),
            "matmul_floor_tflops": round(floor / 1e12, 3), "achieved_tflops": round(flops / gen_s / 1e12, 3),
            "ratio_of_matmul_floor": round(flops / gen_s / floor, 3),
        }  # fmt: skip
        if any(g.n_tokens != tokens for g in out):
            report["warning"] = "some captions did not reach the forced length"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
