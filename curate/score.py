"""The score step of the plan: motion, aesthetics, watermarks, burned-in text and NSFW over the clip rows, on Ray Data.

Each enabled scorer is one `map_batches` over the clips table (columns added, no row dropped). The
CPU scorers run as tasks; the aesthetic scorer runs in actors that load CLIP once, asking Ray for a
GPU each when the cluster has GPUs (and on the CPU otherwise). Text and NSFW run together in actors
that open one session per model once; when both sample the same number of frames, each clip is
decoded once for both.
"""

from __future__ import annotations

import functools

import pyarrow as pa

from curate.config import ConfigError, JobConfig, to_dict
from schemas import AESTHETIC_FIELDS, MOTION_FIELDS, NSFW_FIELDS, TEXT_FIELDS, WATERMARK_FIELDS
from stages.aesthetic import EMBEDDING_COLUMN, ScoreAesthetic, WeightsError
from stages.frames import read_frames
from stages.motion import ScoreMotion
from stages.nsfw import ScoreNsfw
from stages.nsfw import model_info as nsfw_model_info
from stages.text import ScoreText
from stages.text import file_sha256 as text_file_sha256
from stages.text import model_info as text_model_info
from stages.watermark import AGREEMENT, BIAS, BOX_MARGIN, MIN_SIDE, NEAR, WEIGHTS, ScoreWatermark


def check_scorers(cfg: JobConfig) -> None:
    """Stop the job at start when a scorer's weights are missing (the message says what to set)."""
    try:
        if cfg.aesthetic is not None:
            cfg.aesthetic.check()
        if cfg.watermark is not None:
            cfg.watermark.check()
        reads = cfg.watermark is not None and cfg.watermark.mean_words and cfg.watermark.method != "classifier"
        if cfg.text is not None or reads:
            text_model_info()  # the OCR models must be in the installed rapidocr wheel (the watermark step reads the mean frame with them)
        if cfg.nsfw is not None:
            nsfw_model_info()
    except (WeightsError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e


class _AestheticActor:
    """One CLIP per actor, loaded on first use and kept for every batch the actor gets."""

    def __init__(self, cfg, embeddings: bool = False):
        self.stage = ScoreAesthetic(cfg, embeddings=embeddings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


class _ImageModelsActor:
    """The text and NSFW scorers of one worker: one onnxruntime session per model, loaded on first use.
    Scorers that sample the same number of frames share one decode (at the larger of their sizes)."""

    def __init__(self, text_cfg, nsfw_cfg):
        self.stages = [s for s in (ScoreText(text_cfg) if text_cfg else None, ScoreNsfw(nsfw_cfg) if nsfw_cfg else None) if s]

    def __call__(self, batch: pa.Table) -> pa.Table:
        by_frames: dict[int, list] = {}
        for stage in self.stages:
            by_frames.setdefault(stage.cfg.frames, []).append(stage)
        for n, stages in by_frames.items():
            frames, errors = read_frames(batch, n, max(s.cfg.size for s in stages))
            for stage in stages:
                batch = stage.score(batch, frames, errors)
        return batch


def score_pools(cfg: JobConfig) -> list[tuple]:
    """(step name, Pool, columns it decides, settings key) of every enabled scorer, in plan order. CPU
    scorers are tasks; text + NSFW and the aesthetic CLIP are actor pools (a GPU share each when the
    cluster has GPUs and, for the ONNX models, onnxruntime can use it)."""
    from curate.plan import Pool, settings_key

    block = cfg.ray.clips_per_block
    pools = []
    if cfg.motion is not None:
        pools.append(("motion", Pool(ScoreMotion, (cfg.motion,), batch_size=block), MOTION_FIELDS,
                      settings_key(to_dict(cfg.motion), SCORE_RULES)))
    watermark = None
    if cfg.watermark is not None:
        watermark = ("watermark", Pool(ScoreWatermark, (cfg.watermark,), batch_size=block), WATERMARK_FIELDS,
                     settings_key(to_dict(cfg.watermark), SCORE_RULES, watermark_model_info(cfg.watermark)))
    words = watermark is not None and cfg.watermark.words and cfg.text is not None
    if watermark is not None and not words:
        pools.append(watermark)
    # Text + NSFW before the aesthetic pool (the order the steps meet the GPU pools in does not matter
    # when streaming, but the columns a `{column}` prompt names must exist before the caption step).
    if cfg.text is not None or cfg.nsfw is not None:
        devices = [c.device for c in (cfg.text, cfg.nsfw) if c is not None]
        threads = max(c.threads for c in (cfg.text, cfg.nsfw) if c is not None)
        actors = cfg.text.actors if cfg.text is not None else 1
        info = [text_model_info() if cfg.text is not None else None, nsfw_model_info() if cfg.nsfw is not None else None]
        pools.append(("text_nsfw", Pool(_ImageModelsActor, (cfg.text, cfg.nsfw), actors=(1, actors), num_cpus=threads,
                                        gpu="cpu" not in devices and _ort_has_cuda(), batch_size=block),
                      ([*TEXT_FIELDS] if cfg.text else []) + ([*NSFW_FIELDS] if cfg.nsfw else []),
                      settings_key(to_dict(cfg.text), to_dict(cfg.nsfw), SCORE_RULES, info)))
    if words:  # after the text scorer, whose static words it reads (its key: the text step's settings too)
        name, pool, fields, key = watermark
        pools.append((name, pool, fields, settings_key(key, pools[-1][3])))
    if cfg.aesthetic is not None:
        emb = keeps_embeddings(cfg)
        pools.append(("aesthetic", Pool(_AestheticActor, (cfg.aesthetic, emb), actors=(1, 1 << 10), gpu=True,
                                        batch_size=max(1, cfg.aesthetic.batch_size // cfg.aesthetic.frames)),
                      [*AESTHETIC_FIELDS, pa.field(EMBEDDING_COLUMN, pa.binary())] if emb else AESTHETIC_FIELDS, aesthetic_key(cfg)))
    return [(name, pool, [f.name for f in fields], key) for name, pool, fields, key in pools]


def watermark_model_info(cfg) -> list:
    """What decides the watermark scores besides the settings: the edges model's constants, or the
    learned detector's weights file (its sha256: retrained weights score again), or both, with how
    they are combined; with `mean_words`, the OCR models that read the mean frame."""
    edges = [WEIGHTS, BIAS, BOX_MARGIN]
    words = [text_model_info()] if cfg.mean_words and cfg.method != "classifier" else []
    if cfg.method == "net":
        return ["net", file_sha256(cfg.net_file), *words]
    return ["both", file_sha256(cfg.net_file), *edges, MIN_SIDE, AGREEMENT, NEAR, *words] if cfg.method == "both" else [*edges, *words]


file_sha256 = functools.lru_cache(maxsize=16)(text_file_sha256)


def keeps_embeddings(cfg: JobConfig) -> bool:
    """Whether the aesthetic step keeps each clip's CLIP embedding in its log (for dedup by embedding)."""
    return cfg.aesthetic is not None and cfg.dedup is not None and cfg.dedup.embedding_similarity is not None


def aesthetic_key(cfg: JobConfig) -> str:
    """The aesthetic step's settings key; with embeddings kept, a key of its own (scores committed
    without embeddings are computed again once)."""
    from curate.plan import settings_key

    return settings_key(to_dict(cfg.aesthetic), SCORE_RULES, *(["embedding"] if keeps_embeddings(cfg) else []))


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# Bumped when a scorer's code scores the same clip differently under the same settings, so a rerun does
# not reuse scores the current code would not give (2: the watermark detector's votes and blank rule;
# 4: one clip per CLIP pass, so an aesthetic score does not depend on the clips it was batched with).
# The watermark model's fitted constants are part of its key too, so a refit invalidates on its own.
SCORE_RULES = 4
