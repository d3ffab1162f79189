"""Captions for kept clips from a vision-language model, checked, and scored against the frames by CLIP.

Two steps so a GPU never waits on a decoder: `PrepareCaptions` (CPU: decode `frames` evenly spaced
frames of the clip file, resize, run the model's processor with the chat template) and
`GenerateCaptions` (batched generation, caption checks, one retry, CLIP alignment). `Caption` runs
both in one call for use without Ray. Every caption is written back by row index, never by position
in a generation batch:

    rows          r0  r1  r2  r3  r4           (the batch, any order)
    by length     r3  r0  r4 | r1  r2          (sorted so a generation batch pads little)
    generate      c3  c0  c4 | c1  c2
    scatter       caption[r_i] = c_i           (by the index carried with each item)

Models are named by hub id or local folder; `PINNED` is the one place naming upstream weights.
Nothing here downloads: a hub id must already be in the Hugging Face cache (`huggingface-cli
download ID --revision REV`), else `WeightsError` says so. `weights: random` (or a folder written by
`curate models make-tiny`) gives random weights, and `caption_model` says "(random weights)".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import string
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa

from schemas import CAPTION_FIELDS, CLIPS, CaptionReason, CaptionStatus, ClipStatus
from stages.columns import set_columns
from stages.media import MediaError, local_copy, sample_evenly

# The one place naming upstream weights: hub id -> revision to download (`huggingface-cli download ID
# --revision REV`). Branch names until a commit is verified on a machine that reaches the hub.
PINNED = {
    "vlm": {
        "Qwen/Qwen2.5-VL-3B-Instruct": "main",  # default
        "Qwen/Qwen2.5-VL-7B-Instruct": "main",
        "Qwen/Qwen3-VL-4B-Instruct": "main",
        "HuggingFaceTB/SmolVLM2-2.2B-Instruct": "main",
    },
    # open_clip name -> pretrained tag, for caption_clip_score
    "clip": {"ViT-L-14": "openai", "ViT-B-32": "openai"},
}
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
RANDOM = "random"
TINY_MARKER = "curate_tiny.json"  # written by `curate models make-tiny` next to random weights

PROMPTS = {
    "short": "Describe this video in one sentence: the main subject, what happens, and the setting.",
    "detailed": (
        "Describe this video in detail in one paragraph: the subjects and their appearance, the actions "
        "and how they change over time, the camera motion and framing, the lighting, and the setting. "
        "Do not speculate about anything that is not visible."
    ),
    "structured": (
        "Describe this video as one JSON object and nothing else, with exactly these keys: "
        '"subjects" (a list of strings: who or what is seen, with their appearance), '
        '"actions" (a list of strings: what happens, in order), "setting" (a string: where), '
        '"camera" (a string: camera motion and framing), "lighting" (a string), '
        '"style" (a string: live action, animation, screen recording, ...), '
        '"on_screen_text" (a list of strings: text visible in the frames; empty when there is none). '
        "Do not speculate about anything that is not visible."
    ),
}
# caption.style structured: the fixed shape of the model's answer (key -> list of strings, or a string)
STRUCTURED = {"subjects": list, "actions": list, "setting": str, "camera": str, "lighting": str, "style": str, "on_screen_text": list}

# camera_hint: what the prompt says for each camera_motion label (stages/camera.py); complex says nothing
CAMERA_HINTS = {
    "static": "The camera is static.",
    "pan_left": "The camera pans left.",
    "pan_right": "The camera pans right.",
    "tilt_up": "The camera tilts up.",
    "tilt_down": "The camera tilts down.",
    "zoom_in": "The camera zooms in.",
    "zoom_out": "The camera zooms out.",
}

_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry[,.!]|i apologi[sz]e|i can(not|'t|not)\b|i am (not able|unable)|i'?m (not able|unable)|"
    r"as an ai\b|unfortunately,? i (can|am|'m))"
    r"|\bi (cannot|can't|am unable to|'m unable to) (describe|help|assist|provide|see|view|process)",
    re.IGNORECASE,
)


class WeightsError(ValueError):
    """Weights that are not there; the message says what to download or set."""


REWRITE_PROMPT = (
    "Rewrite this video description as one caption for training a video generation model: one paragraph "
    "of {min_words} to {max_words} words, present tense, only what is visible, no preamble.\n\n"
    "Description: {caption}"
)


@dataclass(frozen=True)
class RewriteConfig:
    """caption.rewrite: a text-only causal LM that rewrites each caption into the trainer's style and length."""

    model: str  # hub id (in the HF cache), a local folder (save_pretrained layout), or `tiny` (curate's cache)
    revision: str | None = None  # hub revision (default main)
    weights: Literal["pretrained", "random"] = "pretrained"
    prompt: str = REWRITE_PROMPT  # with {caption}, and {min_words} / {max_words} if wanted
    min_words: int = 8  # the length band a rewrite must fall in (else it is retried once, then the VLM's caption stays)
    max_words: int = 80
    max_new_tokens: int = 160
    batch_size: int = 16  # captions per generate() call

    def __post_init__(self):
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"rewrite needs 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if "{caption}" not in self.prompt:
            raise ValueError("rewrite.prompt must contain {caption}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("rewrite.max_new_tokens and rewrite.batch_size must be >= 1")

    def check(self) -> None:
        if os.path.isdir(self.model):
            return
        if self.model.startswith((".", "/", "~")) or self.model.count("/") != 1:
            raise WeightsError(f"caption.rewrite.model: no such folder: {self.model}")
        if _hub_cached(self.model, self.revision or "main") is None:
            raise WeightsError(f"caption.rewrite.model {self.model} is not in the Hugging Face cache: run `huggingface-cli download "
                               f"{self.model}` on a machine that reaches the hub, or set caption.rewrite.model=PATH")


class CaptionError(Exception):
    """A clip whose frames cannot be read."""


@dataclass(frozen=True)
class CaptionConfig:
    model: str = DEFAULT_MODEL  # hub id (must be in the HF cache) or a local folder (save_pretrained layout)
    revision: str | None = None  # hub revision; default PINNED["vlm"][model]
    weights: Literal["pretrained", "random"] = "pretrained"  # random: the model's architecture with random weights (marked)
    backend: Literal["transformers", "vllm"] = "transformers"  # vllm only when it is installed
    style: Literal["short", "detailed", "structured"] = "short"  # which of PROMPTS; structured: JSON -> caption_json
    prompt: str | None = None  # your own prompt instead of the style's (caption_style "custom"); {column} fills in a clips column
    frames: int = 8  # frames per clip, evenly spaced over the clip
    frame_size: int = 448  # the longer side of each frame, in pixels, before the processor
    max_new_tokens: int = 128  # output token limit
    decoding: Literal["greedy", "sample"] = "greedy"
    temperature: float = 0.7  # sample only
    top_p: float = 0.9  # sample only
    seed: int = 0  # torch seed before each generation batch (sample, and the sampled retry)
    retry: bool = True  # one retry with adjusted settings when a caption fails a check
    repeat_ngram: int = 4  # an n-gram (n up to this) repeated 3 times in a row is a loop
    batch_size: int = 8  # clips per generate() call
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: float = 1.0  # per generation actor, asked for only when the cluster has GPUs
    actors: int = 1  # generation actors (one model each)
    prep_actors: int = 1  # CPU preparation actors (decode + processor)
    clip_model: str | None = None  # CLIP for caption_clip_score: an open_clip folder, or an open_clip name with clip_weights
    clip_weights: str | None = None  # with an open_clip name: a weights file, the pretrained tag, or `random`
    rewrite: RewriteConfig | None = None  # a text-only LM rewriting each caption (the VLM's kept in caption_raw)
    camera_hint: bool = False  # tell the model the clip's camera_motion ("The camera pans left.") after the prompt

    def __post_init__(self):
        for name in ("frames", "frame_size", "max_new_tokens", "batch_size", "actors", "prep_actors", "repeat_ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.num_gpus < 0:
            raise ValueError(f"num_gpus must be >= 0, got {self.num_gpus}")
        unknown = sorted(set(prompt_columns(self.text)) - set(CLIPS.names))
        if unknown:
            raise ValueError(f"prompt names {{{unknown[0]}}}, which is not a clips column (known: motion_score, watermark_score, ...)")

    @property
    def style_name(self) -> str:
        return "custom" if self.prompt else self.style

    @property
    def text(self) -> str:
        return self.prompt or PROMPTS[self.style]

    def prompt_for(self, row: dict) -> str:
        """The prompt for one clip: `text` with its {column}s filled from the clip's row (fill_prompt), plus
        its camera motion with camera_hint."""
        text = fill_prompt(self.text, row)
        hint = CAMERA_HINTS.get(row.get("camera_motion") or "") if self.camera_hint else None
        return f"{text} {hint}" if hint else text

    def check(self) -> None:
        """Raise WeightsError unless the model (and CLIP) can be loaded without a download; cheap."""
        if self.backend == "vllm":
            try:
                import vllm  # noqa: F401
            except ImportError as e:
                raise WeightsError("caption.backend=vllm needs vLLM: pip install vllm (GPU machines)") from e
        if not os.path.isdir(self.model):
            rev = self.revision or PINNED["vlm"].get(self.model, "main")
            if self.model.startswith((".", "/", "~")) or self.model.count("/") != 1:
                raise WeightsError(f"caption.model: no such folder: {self.model}")
            if _hub_cached(self.model, rev) is None:
                raise WeightsError(
                    f"caption.model {self.model} is not in the Hugging Face cache: run `huggingface-cli download "
                    f"{self.model} --revision {rev}` on a machine that reaches the hub (or copy the folder here and "
                    f"set caption.model=PATH); `curate models make-tiny DIR` writes a tiny random one for trials"
                )
        if self.rewrite is not None:
            self.rewrite.check()
        if self.clip_model and not os.path.isdir(self.clip_model):
            if self.clip_weights is None:
                raise WeightsError(
                    f"caption.clip_model {self.clip_model} is not a folder: set caption.clip_weights to a weights "
                    f"file, an open_clip pretrained tag ({PINNED['clip'].get(self.clip_model, 'openai')}) or `random`"
                )


def prompt_columns(prompt: str) -> list[str]:
    """The clips columns a prompt names in braces ("... the camera {motion_method} ..." -> ["motion_method"])."""
    return [name for _, name, _, _ in string.Formatter().parse(prompt) if name]


class _Fill(string.Formatter):
    def format_field(self, value, spec):
        return "unknown" if value is None else super().format_field(value, spec)


def fill_prompt(prompt: str, row: dict) -> str:
    """The prompt with each {column} (format spec allowed: {aesthetic_score:.1f}) replaced by the clip's value;
    a null value reads "unknown". A prompt without braces is returned as it is."""
    if not prompt_columns(prompt):
        return prompt
    return _Fill().vformat(prompt, (), {name: row.get(name) for name in prompt_columns(prompt)})


def _hub_cached(repo: str, revision: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    path = try_to_load_from_cache(repo, "config.json", revision=revision)
    return path if isinstance(path, str) else None


def is_random(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, TINY_MARKER))


def weights_revision(model: str, revision: str | None = None) -> str | None:
    """What names the weights exactly: a hub model's cached commit, or `sha256:` of a local folder's (or
    file's) weight, config and tokenizer files; None for a name that is neither (an open_clip architecture)."""
    if os.path.isdir(model) or os.path.isfile(model):
        h = hashlib.sha256()
        files = [model] if os.path.isfile(model) else [
            os.path.join(model, n) for n in sorted(os.listdir(model))
            if n.endswith((".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model", ".jinja"))]
        for path in files:
            h.update(os.path.basename(path).encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return "sha256:" + h.hexdigest()[:16]
    if model.count("/") == 1:
        path = _hub_cached(model, revision or PINNED["vlm"].get(model, "main"))
        if path:  # .../snapshots/<commit>/config.json
            return os.path.basename(os.path.dirname(path))
    return None


# ------------------------------------------------------------------------------------------- decoding settings


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    @classmethod
    def of(cls, cfg: CaptionConfig) -> Decoding:
        sample = cfg.decoding == "sample"
        return cls(cfg.max_new_tokens, sample, cfg.temperature if sample else 1.0, cfg.top_p if sample else 1.0, 1.0, cfg.seed)


def retry_decoding(d: Decoding, reason: str) -> Decoding:
    """The settings of the one retry: more room when cut off, a repetition penalty for loops, sampling otherwise."""
    if reason == CaptionReason.TRUNCATED:
        return dataclasses.replace(d, max_new_tokens=d.max_new_tokens * 2, repetition_penalty=max(d.repetition_penalty, 1.05))
    if reason == CaptionReason.REPETITIVE:
        return dataclasses.replace(d, repetition_penalty=1.2, do_sample=True, temperature=0.7, top_p=0.9, seed=d.seed + 1)
    return dataclasses.replace(d, do_sample=True, temperature=0.8, top_p=0.95, seed=d.seed + 1)


# ------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Generated:
    text: str
    n_tokens: int  # output tokens, the end-of-sequence token not counted
    finished: bool  # ended with an end-of-sequence token (not at the token limit)


def check_caption(g: Generated, max_new_tokens: int, repeat_ngram: int = 4) -> str | None:
    """The CaptionReason a caption fails, or None when it passes."""
    text = g.text.strip()
    if not re.search(r"\w", text):
        return CaptionReason.EMPTY
    if _REFUSAL.search(text):
        return CaptionReason.REFUSAL
    if is_repetitive(text, repeat_ngram):
        return CaptionReason.REPETITIVE
    if not g.finished and g.n_tokens >= max_new_tokens:
        return CaptionReason.TRUNCATED
    return None


def parse_structured(text: str) -> dict | None:
    """The answer's JSON object in the fixed shape (STRUCTURED; a string where a list is due becomes a
    one-item list, null an empty value), or None when it is not one JSON object with exactly those keys
    or names neither a subject nor an action."""
    body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip())  # a fenced code block is still the answer
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or set(obj) != set(STRUCTURED):
        return None
    out = {}
    for key, kind in STRUCTURED.items():
        v = obj[key]
        if v is None:
            v = kind()
        if kind is list and isinstance(v, str):
            v = [v] if v.strip() else []
        if kind is list and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            return None
        if kind is str and not isinstance(v, str):
            return None
        out[key] = [x.strip() for x in v if x.strip()] if kind is list else v.strip()
    return out if out["subjects"] or out["actions"] else None


def structured_prose(d: dict) -> str:
    """The prose caption of a structured answer: what and who, what happens, then the labelled details."""
    lead = "; ".join(d["subjects"])
    if d["actions"]:
        lead = f"{lead}: {'; '.join(d['actions'])}" if lead else "; ".join(d["actions"])
    parts = [lead.rstrip(".") + "."]
    for key, label in (("setting", "Setting"), ("camera", "Camera"), ("lighting", "Lighting"), ("style", "Style")):
        if d[key]:
            parts.append(f"{label}: {d[key].rstrip('.')}.")
    if d["on_screen_text"]:
        parts.append("On-screen text: " + ", ".join(f'"{t}"' for t in d["on_screen_text"]) + ".")
    return " ".join(parts)


def is_repetitive(text: str, max_n: int = 4, repeats: int = 3) -> bool:
    """An n-gram loop: some n-gram (n <= max_n words) repeated `repeats` times in a row (one word: repeats+1),
    or fewer than 60 % of the 3-grams distinct in a text of 12 or more words; or a character loop
    (a 2-10 character chunk repeated 6 times) in text without spaces."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    for n in range(1, max_n + 1):
        need = repeats + 1 if n == 1 else repeats
        for i in range(0, len(words) - n * need + 1):
            gram = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == gram for k in range(1, need)):
                if n == 1 and not gram[0].isalnum():
                    continue  # "..." is not a loop
                return True
    tri = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(words) >= 12 and len(set(tri)) < 0.6 * len(tri):
        return True
    return bool(re.search(r"(\S{2,10}?)\1{5,}", text))


# ------------------------------------------------------------------------------------------- frames


def sample_frames(path: str, n: int, size: int, n_frames: int | None = None) -> list[np.ndarray]:
    """`n` evenly spaced RGB frames (decode order) of the video at `path`, the longer side scaled to `size`
    (even sizes, never upscaled past the source)."""

    def rgb(frame):
        scale = min(1.0, size / max(frame.width, frame.height))
        w = max(2, round(frame.width * scale / 2) * 2)
        h = max(2, round(frame.height * scale / 2) * 2)
        return frame.to_ndarray(format="rgb24", width=w, height=h)

    try:
        frames = sample_evenly(path, n, rgb, n_frames)
    except MediaError as e:
        raise CaptionError(str(e)) from e
    if not frames:
        raise CaptionError("no frames decoded")
    while len(frames) < n:  # a clip shorter than `n` frames (or a short count): repeat the last one
        frames.append(frames[-1])
    return frames


def fingerprint(frames: list[np.ndarray]) -> str:
    """16 hex digits identifying exactly these frames (shapes and pixels)."""
    h = hashlib.sha256()
    for f in frames:
        h.update(repr(f.shape).encode())
        h.update(np.ascontiguousarray(f).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------- models


class VLM(Protocol):
    """What the caption step needs of a model. `prepare` runs on CPU workers, `generate` where the model is."""

    name: str  # hub id or folder, with " (random weights)" when so

    def prepare(self, frames: list[np.ndarray], prompt: str) -> dict: ...  # picklable model inputs of one clip

    def generate(self, items: list[dict], decoding: Decoding) -> list[Generated]: ...  # one per item, same order


class TransformersVLM:
    """transformers AutoProcessor + AutoModelForImageTextToText with the model's chat template.

    The processor loads at once (CPU preparation needs only it); the weights on the first `generate`.
    Frames go in as one video when the processor has a video processor (Qwen2-VL, Qwen2.5-VL, Qwen3-VL),
    else as that many images (SmolVLM-style)."""

    def __init__(self, cfg: CaptionConfig):
        from transformers import AutoProcessor

        self.cfg = cfg
        self.source, self.revision = _source(cfg)
        self.processor = AutoProcessor.from_pretrained(self.source, revision=self.revision)
        tok = getattr(self.processor, "tokenizer", self.processor)
        tok.padding_side = "left"
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.as_video = getattr(self.processor, "video_processor", None) is not None
        self.random = cfg.weights == RANDOM or (os.path.isdir(cfg.model) and is_random(cfg.model))
        self.name = cfg.model + (" (random weights)" if self.random else "")
        self.model = None

    def prepare(self, frames: list[np.ndarray], prompt: str) -> dict:
        visual = [{"type": "video"}] if self.as_video else [{"type": "image"} for _ in frames]
        messages = [{"role": "user", "content": [*visual, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        media = {"videos": [np.stack(frames)]} if self.as_video else {"images": [list(frames)]}
        inputs = self.processor(text=[text], return_tensors="pt", **media)
        return {k: v.numpy() for k, v in inputs.items() if hasattr(v, "numpy")}

    def load(self):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        if self.model is not None:
            return self.model
        cuda = self.cfg.device == "cuda" or (self.cfg.device == "auto" and torch.cuda.is_available())
        self.device = "cuda" if cuda else "cpu"
        dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16, "float32": torch.float32}[self.cfg.dtype]
        if self.cfg.weights == RANDOM:
            config = AutoConfig.from_pretrained(self.source, revision=self.revision)
            with torch.device(self.device):  # initialised where it runs: a 3B model in seconds on a GPU
                model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
        else:
            model = AutoModelForImageTextToText.from_pretrained(self.source, revision=self.revision, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.eos = _eos_ids(self.model, self.processor)
        return self.model

    def collate(self, items: list[dict]) -> dict:
        import torch

        width = max(it["input_ids"].shape[1] for it in items)
        out = {}
        for key in items[0]:
            if key in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
                fill = self.pad_id if key == "input_ids" else 0
                rows = [np.concatenate([np.full((1, width - it[key].shape[1]), fill, it[key].dtype), it[key]], 1) for it in items]
                out[key] = torch.from_numpy(np.concatenate(rows, 0))
            else:  # visual inputs: Qwen's flattened patches and grids, SmolVLM's per-image stacks
                out[key] = torch.from_numpy(np.concatenate([it[key] for it in items], 0))
        return out

    def generate(self, items: list[dict], decoding: Decoding) -> list[Generated]:
        import torch

        model = self.load()
        inputs = {k: v.to(self.device) for k, v in self.collate(items).items()}
        if "pixel_values_videos" in inputs or "pixel_values" in inputs:
            key = "pixel_values_videos" if "pixel_values_videos" in inputs else "pixel_values"
            inputs[key] = inputs[key].to(model.dtype)
        torch.manual_seed(decoding.seed)
        with torch.inference_mode():
            out = model.generate(**inputs, **_generate_kwargs(decoding, self.pad_id))
        new = out[:, inputs["input_ids"].shape[1] :].cpu().tolist()
        return [self._result(ids) for ids in new]

    def _result(self, ids: list[int]) -> Generated:
        end = next((i for i, t in enumerate(ids) if t in self.eos), None)
        kept = ids if end is None else ids[:end]
        text = self.processor.batch_decode([kept], skip_special_tokens=True)[0]
        return Generated(text.strip(), len(kept), end is not None)


class VllmVLM:
    """vLLM backend (imported only when chosen): the same prompts and frames, vLLM's own batching."""

    def __init__(self, cfg: CaptionConfig):
        from transformers import AutoProcessor

        self.cfg = cfg
        self.source, self.revision = _source(cfg)
        self.processor = AutoProcessor.from_pretrained(self.source, revision=self.revision)
        self.random = cfg.weights == RANDOM or (os.path.isdir(cfg.model) and is_random(cfg.model))
        self.name = cfg.model + (" (random weights)" if self.random else "") + " [vllm]"
        self.llm = None

    def prepare(self, frames: list[np.ndarray], prompt: str) -> dict:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return {"prompt": text, "video": np.stack(frames), "input_ids": np.zeros((1, len(text)), np.int32)}

    def generate(self, items: list[dict], decoding: Decoding) -> list[Generated]:
        from vllm import LLM, SamplingParams

        if self.llm is None:
            load_format = "dummy" if self.cfg.weights == RANDOM else "auto"
            self.llm = LLM(self.source, revision=self.revision, load_format=load_format, dtype="auto", seed=self.cfg.seed,
                           limit_mm_per_prompt={"video": 1})
        params = SamplingParams(
            max_tokens=decoding.max_new_tokens, temperature=decoding.temperature if decoding.do_sample else 0.0,
            top_p=decoding.top_p, repetition_penalty=decoding.repetition_penalty, seed=decoding.seed,
        )
        reqs = [{"prompt": it["prompt"], "multi_modal_data": {"video": it["video"]}} for it in items]
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        return [Generated(o.outputs[0].text.strip(), len(o.outputs[0].token_ids), o.outputs[0].finish_reason == "stop") for o in outs]


def _generate_kwargs(decoding: Decoding, pad_id: int) -> dict:
    kwargs = dict(max_new_tokens=decoding.max_new_tokens, do_sample=decoding.do_sample,
                  repetition_penalty=decoding.repetition_penalty, pad_token_id=pad_id)  # fmt: skip
    if decoding.do_sample:
        kwargs.update(temperature=decoding.temperature, top_p=decoding.top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


class Rewriter(Protocol):
    """What the rewrite pass needs of a text model: prompts in, one result each, same order."""

    name: str

    def generate(self, prompts: list[str], decoding: Decoding) -> list[Generated]: ...


class TransformersLM:
    """A transformers causal LM (AutoTokenizer + AutoModelForCausalLM), with its chat template when it has one."""

    def __init__(self, cfg: RewriteConfig, device: str = "auto", dtype: str = "auto"):
        from transformers import AutoTokenizer

        self.cfg, self.want_device, self.want_dtype = cfg, device, dtype
        self.revision = None if os.path.isdir(cfg.model) else (cfg.revision or "main")
        self.tok = AutoTokenizer.from_pretrained(cfg.model, revision=self.revision)
        self.tok.padding_side = "left"
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        random = cfg.weights == RANDOM or (os.path.isdir(cfg.model) and is_random(cfg.model))
        self.name = cfg.model + (" (random weights)" if random else "")
        self.model = None

    def load(self):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        if self.model is None:
            cuda = self.want_device == "cuda" or (self.want_device == "auto" and torch.cuda.is_available())
            self.device = "cuda" if cuda else "cpu"
            dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bfloat16": torch.bfloat16,
                     "float16": torch.float16, "float32": torch.float32}[self.want_dtype]  # fmt: skip
            if self.cfg.weights == RANDOM:
                with torch.device(self.device):
                    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(self.cfg.model, revision=self.revision), dtype=dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(self.cfg.model, revision=self.revision, dtype=dtype)
            self.model = model.to(self.device).eval()
            self.eos = _eos_ids(self.model, self.tok)
        return self.model

    def generate(self, prompts: list[str], decoding: Decoding) -> list[Generated]:
        import torch

        model = self.load()
        if self.tok.chat_template:
            prompts = [self.tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
                       for p in prompts]  # fmt: skip
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(decoding.seed)
        with torch.inference_mode():
            out = model.generate(**enc, **_generate_kwargs(decoding, self.pad_id))
        results = []
        for ids in out[:, enc["input_ids"].shape[1] :].cpu().tolist():
            end = next((i for i, t in enumerate(ids) if t in self.eos), None)
            kept = ids if end is None else ids[:end]
            results.append(Generated(self.tok.decode(kept, skip_special_tokens=True).strip(), len(kept), end is not None))
        return results


def _source(cfg: CaptionConfig) -> tuple[str, str | None]:
    if os.path.isdir(cfg.model):
        return cfg.model, None
    return cfg.model, cfg.revision or PINNED["vlm"].get(cfg.model, "main")


def _eos_ids(model, processor) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    tok = getattr(processor, "tokenizer", processor)
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def load_vlm(cfg: CaptionConfig) -> VLM:
    """The configured VLM (processor now, weights on first use); raises WeightsError naming what is missing."""
    cfg.check()
    return VllmVLM(cfg) if cfg.backend == "vllm" else TransformersVLM(cfg)


class ClipAlignment:
    """caption + frames -> mean cosine similarity of the CLIP text embedding and each frame's image embedding."""

    def __init__(self, cfg: CaptionConfig):
        import open_clip
        import torch

        self.torch = torch
        self.device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        if os.path.isdir(cfg.clip_model):
            spec = "local-dir:" + os.path.abspath(cfg.clip_model)
            model, _, self.preprocess = open_clip.create_model_and_transforms(spec)
            self.tokenizer = open_clip.get_tokenizer(spec)
            random = is_random(cfg.clip_model)
        else:
            pretrained = None if cfg.clip_weights == RANDOM else cfg.clip_weights
            model, _, self.preprocess = open_clip.create_model_and_transforms(cfg.clip_model, pretrained=pretrained)
            self.tokenizer = open_clip.get_tokenizer(cfg.clip_model)
            random = cfg.clip_weights == RANDOM
        self.model = model.eval().to(self.device)
        self.name = cfg.clip_model + (" (random weights)" if random else "")

    def __call__(self, frames: list[list[np.ndarray]], captions: list[str]) -> list[float]:
        from PIL import Image

        torch = self.torch
        scores = []
        # One clip per pass: a score then depends on its own frames and caption only, not on which clips
        # share its batch (batched CPU kernels round differently by batch shape and position).
        with torch.inference_mode():
            for fs, caption in zip(frames, captions):
                x = torch.stack([self.preprocess(Image.fromarray(f)) for f in fs]).to(self.device)
                img = self.model.encode_image(x).float()
                txt = self.model.encode_text(self.tokenizer([caption]).to(self.device)).float()
                img = img / img.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                txt = txt / txt.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                scores.append(float((img @ txt[0]).mean()))
        return scores


# ------------------------------------------------------------------------------------------- the stage

PREPARED = "_caption_inputs"  # the column PrepareCaptions adds and GenerateCaptions consumes (pickled)
# A kept row whose caption is known (reused): true asks only for its CLIP alignment (frames, no generation).
RESCORE = "_caption_rescore"


def _captionable(row: dict) -> bool:
    return row.get("status") == ClipStatus.KEPT and bool(row.get("clip_uri"))


class PrepareCaptions:
    """CPU: CLIPS rows -> the same rows plus the `_caption_inputs` column (frames, processor output)."""

    def __init__(self, cfg: CaptionConfig, model: VLM | None = None):
        self.cfg = cfg
        self.model = model if model is not None else load_vlm(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        blobs = []
        for row in batch.to_pylist():
            if not _captionable(row):
                blobs.append(None)
                continue
            try:
                n = (row.get("end_frame") or 0) - (row.get("start_frame") or 0)
                with local_copy(row["clip_uri"]) as path:  # a temporary download for s3:// and the like
                    frames = sample_frames(path, self.cfg.frames, self.cfg.frame_size, n if n > 0 else None)
                if row.get(RESCORE):
                    item = {"frames": frames, "known": True}
                else:
                    item = {"frames": frames, "inputs": self.model.prepare(frames, self.cfg.prompt_for(row))}
            except (OSError, CaptionError, MediaError) as e:
                item = {"error": f"cannot read {row['clip_uri']}: {e}"}
            blobs.append(pickle.dumps(item, protocol=5))
        return set_columns(batch, [pa.field(PREPARED, pa.binary())], [{PREPARED: b} for b in blobs])


class GenerateCaptions:
    """Where the model is: prepared rows -> caption + CAPTION_FIELDS, `_caption_inputs` dropped.

    Items are sorted by prompt length and generated `batch_size` at a time; each result goes back to
    the row whose index it carries. A caption failing a check is generated once more with
    `retry_decoding`; if that fails too, caption is null and caption_status `failed`. A row marked
    `_caption_rescore` keeps its caption and gets only a new CLIP alignment."""

    def __init__(self, cfg: CaptionConfig, model: VLM | None = None, clip: ClipAlignment | None = None,
                 rewriter: Rewriter | None = None):  # fmt: skip
        self.cfg = cfg
        self.model = model if model is not None else load_vlm(cfg)
        self.clip = clip if clip is not None else (ClipAlignment(cfg) if cfg.clip_model else None)
        self.structured = cfg.style == "structured"
        if rewriter is None and cfg.rewrite is not None:
            rewriter = TransformersLM(cfg.rewrite, cfg.device, cfg.dtype)
        self.rewriter = rewriter

    def __call__(self, batch: pa.Table) -> pa.Table:
        blobs = batch[PREPARED].to_pylist() if PREPARED in batch.column_names else [None] * batch.num_rows
        items = {i: pickle.loads(b) for i, b in enumerate(blobs) if b is not None}
        out: list[dict] = [{} for _ in range(batch.num_rows)]
        base = {"caption_model": self.model.name, "caption_style": self.cfg.style_name}
        todo, known = [], []
        for i, item in items.items():
            if "error" in item:
                out[i] = {**base, "caption_status": CaptionStatus.FAILED, "caption_reason": CaptionReason.DECODE_ERROR}
            elif item.get("known"):
                known.append(i)
                kept = ["caption", *(f.name for f in CAPTION_FIELDS if not f.name.startswith("caption_clip_"))]
                out[i] = {k: batch[k][i].as_py() if k in batch.column_names else None for k in kept}
            else:
                todo.append(i)
        decoding = Decoding.of(self.cfg)
        first = self._generate({i: items[i]["inputs"] for i in todo}, decoding)
        reason1 = {i: self._check(g, decoding.max_new_tokens) for i, g in first.items()}
        second: dict[int, Generated] = {}
        reason2: dict[int, str | None] = {}
        if self.cfg.retry:
            by_reason: dict[str, list[int]] = {}
            for i in todo:
                if reason1[i] is not None:
                    by_reason.setdefault(reason1[i], []).append(i)
            for reason, idx in sorted(by_reason.items()):  # one retry batch per reason: its own settings
                d2 = retry_decoding(decoding, reason)
                for i, g in self._generate({i: items[i]["inputs"] for i in idx}, d2).items():
                    second[i], reason2[i] = g, self._check(g, d2.max_new_tokens)
        for i in todo:
            retried = i in second
            g = second[i] if retried else first[i]
            failed = (reason2[i] if retried else reason1[i]) is not None
            answer = parse_structured(g.text) if self.structured and not failed else None
            out[i] = {
                **base,
                "caption": None if failed else structured_prose(answer) if answer else g.text,
                "caption_json": json.dumps(answer, ensure_ascii=False) if answer else None,
                "caption_status": CaptionStatus.FAILED if failed else CaptionStatus.OK,
                # failed: why the last attempt failed; ok after a retry: why the first one was retried
                "caption_reason": (reason2[i] if failed else reason1[i]) if retried else reason1[i],
                "caption_attempts": 2 if retried else 1,
                "caption_tokens": g.n_tokens,
            }
        if self.rewriter is not None:  # the VLM's caption -> caption_raw, the rewrite (when it passes) -> caption
            new = [i for i in todo if out[i]["caption"] is not None]
            rewritten = self._rewrite({i: out[i]["caption"] for i in new})
            for i in new:
                out[i]["caption_raw"] = out[i]["caption"]
                if rewritten[i] is not None:
                    out[i].update(caption=rewritten[i], caption_rewrite_model=self.rewriter.name)
        ok = sorted(i for i in todo + known if out[i].get("caption") is not None)
        if self.clip is not None and ok:
            scores = self.clip([items[i]["frames"] for i in ok], [out[i]["caption"] for i in ok])
            for i, s in zip(ok, scores):
                out[i].update(caption_clip_score=s, caption_clip_model=self.clip.name)
        batch = batch.drop_columns([c for c in (PREPARED, RESCORE) if c in batch.column_names])
        # rows not captioned here keep what they had (caption included)
        keep = {f.name: batch[f.name].to_pylist() if f.name in batch.column_names else [None] * batch.num_rows
                for f in [pa.field("caption", pa.string()), *CAPTION_FIELDS]}
        rows = [o if i in items else {k: v[i] for k, v in keep.items()} for i, o in enumerate(out)]
        return set_columns(batch, [pa.field("caption", pa.string()), *CAPTION_FIELDS], rows)

    def _check(self, g: Generated, max_new_tokens: int) -> str | None:
        """check_caption; with style structured the answer must first be the fixed JSON shape, and the
        other checks look at the prose made from it (a cut-off answer is `truncated`, not invalid)."""
        if not self.structured:
            return check_caption(g, max_new_tokens, self.cfg.repeat_ngram)
        if not g.finished and g.n_tokens >= max_new_tokens:
            return CaptionReason.TRUNCATED
        answer = parse_structured(g.text)
        if answer is None:
            return CaptionReason.INVALID_JSON
        return check_caption(dataclasses.replace(g, text=structured_prose(answer)), max_new_tokens, self.cfg.repeat_ngram)

    def _rewrite(self, captions: dict[int, str]) -> dict[int, str | None]:
        """Row index -> its rewritten caption, or None when the rewrite failed its checks (or its length band)
        twice. Sorted by length and batched like generation; every result goes back by index."""
        rc = self.cfg.rewrite
        prompts = {i: rc.prompt.format(caption=c, min_words=rc.min_words, max_words=rc.max_words) for i, c in captions.items()}
        decoding = Decoding(rc.max_new_tokens, seed=self.cfg.seed)

        def run(idx: list[int], d: Decoding) -> dict[int, tuple[Generated, str | None]]:
            order = sorted(idx, key=lambda i: (-len(prompts[i]), i))
            got: dict[int, tuple[Generated, str | None]] = {}
            for s in range(0, len(order), rc.batch_size):
                part = order[s : s + rc.batch_size]
                res = self.rewriter.generate([prompts[i] for i in part], d)
                if len(res) != len(part):
                    raise RuntimeError(f"{self.rewriter.name} returned {len(res)} rewrites for {len(part)} captions")
                for i, g in zip(part, res):
                    reason = check_caption(g, d.max_new_tokens, self.cfg.repeat_ngram)
                    words = len(g.text.split())
                    got[i] = (g, reason or (None if rc.min_words <= words <= rc.max_words else "length"))
            return got

        first = run(list(prompts), decoding)
        out = {i: g.text if reason is None else None for i, (g, reason) in first.items()}
        failed: dict[str, list[int]] = {}
        for i, (_, reason) in first.items():
            if reason is not None:
                failed.setdefault(reason, []).append(i)
        for reason, idx in sorted(failed.items()) if self.cfg.retry else ():  # one retry, settings adjusted to the reason
            for i, (g, again) in run(idx, retry_decoding(decoding, reason)).items():
                out[i] = g.text if again is None else None
        return out

    def _generate(self, inputs: dict[int, dict], decoding: Decoding) -> dict[int, Generated]:
        """Row index -> its result. Sorted by prompt length (longest first), `batch_size` per call."""
        order = sorted(inputs, key=lambda i: (-_length(inputs[i]), i))
        results: dict[int, Generated] = {}
        for s in range(0, len(order), self.cfg.batch_size):
            idx = order[s : s + self.cfg.batch_size]
            got = self.model.generate([inputs[i] for i in idx], decoding)
            if len(got) != len(idx):
                raise RuntimeError(f"{self.model.name} returned {len(got)} captions for {len(idx)} clips")
            results.update(zip(idx, got))
        return results


def _length(inputs: dict) -> int:
    ids = inputs.get("input_ids")
    return int(ids.shape[-1]) if ids is not None else 0


class Caption:
    """Both steps in one call (no Ray): CLIPS rows -> the same rows with captions."""

    def __init__(self, cfg: CaptionConfig, model: VLM | None = None, clip: ClipAlignment | None = None,
                 rewriter: Rewriter | None = None):  # fmt: skip
        self.model = model if model is not None else load_vlm(cfg)
        self.prepare = PrepareCaptions(cfg, self.model)
        self.generate = GenerateCaptions(cfg, self.model, clip, rewriter)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.generate(self.prepare(batch))



