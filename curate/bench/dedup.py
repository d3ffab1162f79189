"""Near-duplicate detection (stages/dedup.py) on real footage: pairwise precision and recall, speed.

Originals are one segment per shot of the real videos in ../shared/data/videos; each gets the edits a
re-upload makes (EDITS: re-encoded at a much lower quality, half the resolution, an 8% crop in the
centre and in a corner, letterboxed, a logo, half a second trimmed off the start, and all of half
resolution + logo + trim at once). A group is an original and its edits; negatives are every pair across
groups (other shots of the same video, other videos). The groups found by `duplicate_groups` (LSH
candidates, then the distance) give pairwise precision and recall (target >= 0.95 each). Signatures
are made as a job makes them (`--from split`, the default): by the one-pass split from its analysis
frames as it decodes each file (one window per file: no cut, no transition labels); `--from file`: from
the clip file decoded again (the signature step's fallback), with signatures per second. Also printed:
the candidate search over `--index` random signatures (default 1M).

With `--clip-weights` (a local open_clip folder or file, as `aesthetic.weights`; `random` only runs the
path) each clip is also embedded as the aesthetic scorer embeds it (`--clip-frames` frames, the mean of
their unit embeddings) and the same pairwise precision and recall are printed for duplicates by embedding
alone (cosine >= each of `--similarity`) and for signatures or embeddings together, as
`dedup.embedding_similarity` groups them: the way to pick that threshold for a CLIP model.

    python -m curate.bench.dedup [--from split|file] [--index 1000000] [--skip-index]
    python -m curate.bench.dedup --skip-index --clip-weights /models/ViT-L-14 [--clip-model ViT-L-14] [--similarity 0.9 0.95 0.97]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import tempfile
import time

import numpy as np

from stages.dedup import BITS, ROWS, DedupConfig, band_bits_for, candidates, clip_frames, duplicate_groups, signature_of_frames
from stages.media import ffmpeg_exe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(os.environ.get("CURATE_SHARED", os.path.join(ROOT, "..", "shared")), "data", "videos")
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-an"]
LOGO = ("drawbox=x=iw*0.78:y=ih*0.05:w=iw*0.17:h=ih*0.1:color=white@0.8:t=fill,"
        "drawbox=x=iw*0.8:y=ih*0.07:w=iw*0.13:h=ih*0.06:color=red@0.9:t=fill")
# name -> (input options, filter graph or None, crf)
EDITS = {
    "low_quality": ([], None, 40),
    "half_resolution": ([], "scale=trunc(iw/4)*2:trunc(ih/4)*2", 26),
    "crop_8_centre": ([], "crop=trunc(iw*0.92/2)*2:trunc(ih*0.92/2)*2", 23),
    "crop_8_corner": ([], "crop=trunc(iw*0.92/2)*2:trunc(ih*0.92/2)*2:0:0", 23),
    "letterbox": ([], "scale=trunc(iw*0.8/2)*2:trunc(ih*0.8/2)*2,pad=trunc(iw/0.8/2)*2:trunc(ih/0.8*1.3/2)*2:(ow-iw)/2:(oh-ih)/2", 23),
    "logo": ([], LOGO, 23),
    "trim_0.5s": (["-ss", "0.5"], None, 23),
    "half+logo+trim": (["-ss", "0.5"], "scale=trunc(iw/4)*2:trunc(ih/4)*2," + LOGO, 30),
}
# One segment per shot: (video, start s, duration s). Shots from the ground truth's cuts.
SEGMENTS = [
    ("bikes.mp4", 0.0, 1.2), ("bikes.mp4", 1.3, 1.7), ("bikes.mp4", 3.2, 2.0), ("bikes.mp4", 5.6, 1.8), ("bikes.mp4", 7.6, 2.0),
    ("testvideo.mp4", 1.2, 3.5), ("testvideo.mp4", 12.0, 4.0),
    ("goldeneye-vfr-drop3.mp4", 0.5, 3.0), ("goldeneye-vfr-drop3.mp4", 4.5, 3.5), ("goldeneye-vfr-drop3.mp4", 8.9, 1.0),
    ("bigbuckbunny.mp4", 1.0, 4.0), ("traffic_camera.mp4", 15.0, 4.0), ("vtest.avi", 40.0, 4.0),
    ("carphone_pristine.mp4", 0.5, 3.0), ("issue-134-rotate.mp4", 2.0, 4.0),
]


def cut(src: str, start: float, seconds: float, dest: str) -> str:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-ss", f"{start}", "-i", src, "-t", f"{seconds}", *X264, "-crf", "18", dest], check=True)
    return dest


def edit(original: str, name: str, dest: str) -> str:
    pre, graph, crf = EDITS[name]
    vf = ["-vf", graph] if graph else []
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *pre, "-i", original, *vf, *X264, "-crf", str(crf), dest], check=True)
    return dest


def make_groups(tmp: str, segments=SEGMENTS, edits=tuple(EDITS), data: str = DATA) -> list[list[str]]:
    """[[original, edit, ...] per segment]: files under `tmp`."""
    groups = []
    for k, (video, start, seconds) in enumerate(segments):
        orig = cut(os.path.join(data, video), start, seconds, os.path.join(tmp, f"{k:02d}_original.mp4"))
        groups.append([orig] + [edit(orig, e, os.path.join(tmp, f"{k:02d}_{e}.mp4")) for e in edits])
    return groups


def pairwise(groups_true: list[int], groups_found: np.ndarray) -> tuple[float, float, int, int]:
    """(precision, recall, true pairs, found pairs) over all pairs of items."""
    tp = fp = fn = 0
    for a, b in itertools.combinations(range(len(groups_true)), 2):
        same, found = groups_true[a] == groups_true[b], groups_found[a] == groups_found[b]
        tp += same and found
        fp += found and not same
        fn += same and not found
    return tp / max(1, tp + fp), tp / max(1, tp + fn), tp + fn, tp + fp


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=int, default=1_000_000, help="random signatures for the candidate-search timing")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--index-only", action="store_true", help="only the candidate-search timing")
    ap.add_argument("--from", dest="source", choices=("split", "file"), default="split",
                    help="signatures from the one-pass split's analysis frames (as a job) or from the files decoded again")
    ap.add_argument("--clip-weights", help="also embed the clips with this CLIP (an aesthetic.weights value) and measure dedup by embedding")
    ap.add_argument("--clip-model", default="ViT-L-14")
    ap.add_argument("--clip-frames", type=int, default=4)
    ap.add_argument("--similarity", type=float, nargs="+", default=[0.9, 0.95, 0.97])
    args = ap.parse_args(argv)
    cfg = DedupConfig()
    if not args.index_only:
        clip = (args.clip_model, args.clip_weights, args.clip_frames, args.similarity) if args.clip_weights else None
        groups_bench(cfg, args.source, clip)
    if not args.skip_index:
        index_bench(cfg, args.index)


def split_signatures(files: list[str], fps: float, workdir: str) -> np.ndarray:
    """Each file's signature as the one-pass split makes it while it decodes (one window per file)."""
    import pyarrow as pa

    from stages.ingest import Ingest
    from stages.media import EncodeSettings
    from stages.split import Split, SplitConfig

    cfg = SplitConfig(detector="stride", stride_s=1e6, transitions=False, min_clip_s=0.1, max_clip_s=1e6,
                      encode=EncodeSettings(preset="ultrafast"))
    sources = Ingest()(pa.table({"uri": files, "license": ["CC0-1.0"] * len(files)}))
    out = []
    for row in Split(cfg, workdir, signature=(fps, "bench"))(sources).to_pylist():
        kept = [c for c in row["clips"] if c["status"] == "kept" and c["signature"] is not None]
        if len(kept) != 1:
            raise SystemExit(f"{row['uri']}: expected one signed window, got {len(kept)} ({row['error']})")
        out.append(np.frombuffer(kept[0]["signature"], np.uint8).reshape(ROWS, BITS // 8))
    return np.stack(out)


def clip_embeddings(files: list[str], clip_model: str, weights: str, frames: int) -> tuple[np.ndarray, str]:
    """Each file's embedding as the aesthetic step keeps it for dedup ([n, d], unit rows), and the model's name."""
    import pyarrow as pa

    from stages.aesthetic import AestheticModel, load_clip, sample_frames
    from stages.dedup import embedding_bytes, embeddings_array

    import torch

    clip, preprocess, name = load_clip(clip_model, weights)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AestheticModel(clip, preprocess, head=torch.nn.Identity(), name=name, device=device)  # embed() only: no head
    out = [embedding_bytes(model.embed(sample_frames(f, frames))) for f in files]
    return embeddings_array(pa.array(out, pa.binary())), name


def groups_bench(cfg: DedupConfig, source: str = "split", clip=None) -> None:
    with tempfile.TemporaryDirectory(prefix="curate-bench-dedup-") as tmp:
        groups = make_groups(tmp)
        files = [f for g in groups for f in g]
        truth = [k for k, g in enumerate(groups) for _ in g]
        t0 = time.perf_counter()
        if source == "split":
            sigs = split_signatures(files, cfg.fps, os.path.join(tmp, "split"))
        else:
            sigs = np.stack([signature_of_frames(clip_frames(f, cfg.fps)) for f in files])
        sig_s = time.perf_counter() - t0
        seconds = sum(s for _, _, s in SEGMENTS) * len(groups[0])
        emb = clip_embeddings(files, *clip[:3]) if clip else None
    label = duplicate_groups(sigs, cfg)
    p, r, n_true, n_found = pairwise(truth, label)
    print(f"near-duplicates: {len(SEGMENTS)} originals x (1 + {len(EDITS)} edits) = {len(files)} clips, {n_true} duplicate pairs, "
          f"{len(files) * (len(files) - 1) // 2 - n_true} negative pairs")
    print(f"  signatures from {'the one-pass split (analysis frames)' if source == 'split' else 'the files decoded again'}")
    print(f"  pairwise precision {p:.3f}  recall {r:.3f}  (target >= 0.95 each; {n_found} pairs found)")
    names = ["original", *EDITS]
    for e, name in enumerate(names[1:], 1):
        missed = [SEGMENTS[k] for k in range(len(groups)) if label[k * len(names)] != label[k * len(names) + e]]
        print(f"    {name:<16} grouped with its original {len(groups) - len(missed)}/{len(groups)}"
              + (f"  missed: {missed}" if missed else ""))
    merged = {(truth[a], truth[b]) for a, b in itertools.combinations(range(len(files)), 2) if label[a] == label[b] and truth[a] != truth[b]}
    for a, b in sorted(merged):
        print(f"    false merge: {SEGMENTS[a]} ~ {SEGMENTS[b]}")
    if emb is not None:
        from stages.dedup import components, embedding_pairs

        arr, name = emb
        print(f"  CLIP embeddings ({name}, {clip[2]} frames a clip){': random weights, the numbers mean nothing' if clip[1] == 'random' else ''}:")
        for sim in clip[3]:
            i, j = embedding_pairs(arr, sim, DedupConfig(embedding_similarity=sim))
            pe, re_, _, fe = pairwise(truth, components(len(files), i, j))
            both = duplicate_groups(sigs, DedupConfig(embedding_similarity=sim), emb=arr)
            pb, rb, _, fb = pairwise(truth, both)
            print(f"    cosine >= {sim:g}: by embedding alone precision {pe:.3f} recall {re_:.3f} ({fe} pairs); "
                  f"with the signatures precision {pb:.3f} recall {rb:.3f} ({fb} pairs)")
    if source == "file":
        print(f"  signatures: {len(files) / sig_s:.1f} clips/s, {seconds / sig_s:.1f} video-seconds/s (decode + {cfg.fps:g} fps sampled, one process)")
    else:
        print("  (the split's cost of signing: python -m curate.bench.split)")


def index_bench(cfg: DedupConfig, n: int) -> None:
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 256, (n, ROWS, BITS // 8), dtype=np.uint8)
    t0, c0 = time.perf_counter(), time.process_time()
    i, j = candidates(rand, cfg.bands, band_bits_for(n, cfg))
    t, c = time.perf_counter() - t0, time.process_time() - c0
    print(f"  candidate search over {n:,} random signatures ({cfg.bands} bands of {band_bits_for(n, cfg)} bits): "
          f"{t:.1f} s wall, {c:.1f} s CPU, {len(i):,} candidate pairs ({len(i) / n:.2f} per clip)")


if __name__ == "__main__":
    main()
