"""Job files: YAML loaded into frozen dataclasses, with `--set key.path=value` overrides.

Each stage owns a frozen config dataclass; `JobConfig` composes them. Loading is strict: an unknown
key, a missing required key or a value of the wrong type is a `ConfigError` naming the dotted key and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from curate.samples import SamplesConfig
from curate.select import SelectConfig
from stages.policy import PolicyConfig
from stages.caption import CaptionConfig
from stages.latents import LatentsConfig
from stages.shards import ShardConfig
from stages.aesthetic import AestheticConfig
from stages.motion import MotionConfig
from stages.dedup import DedupConfig
from stages.nsfw import NsfwConfig
from stages.text import TextConfig
from stages.watermark import WatermarkConfig
from stages.split import SplitConfig

VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
    ".wmv", ".flv", ".3gp", ".ogv", ".mxf", ".y4m",
)  # fmt: skip


class ConfigError(ValueError):
    """A bad job file or override; the message names the key."""


@dataclass(frozen=True)
class InputConfig:
    dir: str | None = None  # every video file under this folder (local path or fsspec URL)
    manifest: str | None = None  # CSV, JSONL or Parquet with columns uri, license (+ title, author, source_url, attribution)
    license: str | None = None  # licence of every file under `dir`; for manifest rows without one
    title: str | None = None
    author: str | None = None
    source_url: str | None = None
    attribution: str | None = None
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS  # what counts as a video file under `dir`
    samples: SamplesConfig | None = None  # generate sample videos (CC0-1.0) when neither dir nor manifest is set

    def __post_init__(self):
        if self.dir and self.manifest:
            raise ValueError("set input.dir or input.manifest, not both")
        if not (self.dir or self.manifest or self.samples):
            raise ValueError("nothing to read: set input.dir, input.manifest or input.samples")


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # a Ray cluster ("auto", "ray://host:10001"); None starts a local instance
    num_cpus: int | None = None  # CPUs of the local instance (default: all)
    num_gpus: int | None = None  # GPUs of the local instance (default: those found); tests declare 1 on a CPU machine
    sources_per_block: int = 8  # sources whose split is committed (and whose clips travel on) together
    clips_per_block: int = 64  # clip rows per block through the scorers
    # sources per execution of the plan: a larger input runs as several in turn (Ray Data keeps a few KB
    # of bookkeeping per task on the driver until an execution ends; the model pools start again each)
    sources_per_wave: int = 20000

    def __post_init__(self):
        if self.sources_per_block < 1 or self.clips_per_block < 1 or self.sources_per_wave < 1:
            raise ValueError("ray.sources_per_block, ray.clips_per_block and ray.sources_per_wave must be >= 1")


@dataclass(frozen=True)
class JobConfig:
    output: str  # output folder, local path or fsspec URL
    input: InputConfig
    name: str = "curate"
    split: SplitConfig = field(default_factory=SplitConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    # Scorers (null switches one off); aesthetic is off unless the job names its weights.
    motion: MotionConfig | None = field(default_factory=MotionConfig)
    aesthetic: AestheticConfig | None = None
    watermark: WatermarkConfig | None = field(default_factory=WatermarkConfig)
    text: TextConfig | None = field(default_factory=TextConfig)  # burned-in text (OCR models from the rapidocr wheel)
    nsfw: NsfwConfig | None = field(default_factory=NsfwConfig)  # unsafe content (the nudenet wheel's detector)
    select: SelectConfig = field(default_factory=SelectConfig)
    dedup: DedupConfig | None = field(default_factory=DedupConfig)  # near-duplicate clips filtered after select; null: off
    ray: RayConfig = field(default_factory=RayConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # which licences may reach a shard
    caption: CaptionConfig | None = None  # caption kept clips with a vision-language model; off when absent
    latents: LatentsConfig | None = None  # VAE latents (+ caption embeddings) of kept clips; off when unset

    def __post_init__(self):
        if self.dedup is not None and self.dedup.embedding_similarity is not None and self.aesthetic is None:
            raise ValueError("dedup.embedding_similarity compares the aesthetic scorer's CLIP embeddings: "
                             "it needs an aesthetic section (with CLIP weights)")


# ----------------------------------------------------------------------------------------- loading


def load_job(path: str, overrides: list[str] = ()) -> JobConfig:
    """Read a job file and apply `key.path=value` overrides (values parsed as YAML)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read job file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"job file {path} is not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"job file {path}: expected a mapping at the top, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    return from_dict(JobConfig, data)


def apply_override(data: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got {item!r}")
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking keys and types."""
    where = key or "job"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(key, unknown[0])}: unknown key; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(key, name)}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            # A section that may be switched off: `samples: {}` means defaults, `samples: null` means off.
            return _convert(options[0], {} if value is True and dataclasses.is_dataclass(options[0]) else value, key)
        for a in options:
            try:
                return _convert(a, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_name(tp)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {_show(value)}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {_show(value)}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - a programming error


def to_dict(cfg: Any) -> Any:
    """Plain data (YAML-able) of a config dataclass."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "null"


def resolve_paths(cfg: JobConfig, base_dir: str) -> JobConfig:
    """Relative local paths in the job are relative to the working directory; make them absolute."""

    def fix(p: str | None) -> str | None:
        if p is None or "://" in p:
            return p
        return os.path.abspath(os.path.join(base_dir, os.path.expanduser(p)))

    inp = dataclasses.replace(cfg.input, dir=fix(cfg.input.dir), manifest=fix(cfg.input.manifest))
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, opt_out_file=fix(cfg.policy.opt_out_file)))
    cfg = dataclasses.replace(cfg, output=fix(cfg.output), input=inp)
    if cfg.dedup is not None and cfg.dedup.against:
        cfg = dataclasses.replace(cfg, dedup=dataclasses.replace(cfg.dedup, against=tuple(fix(p) for p in cfg.dedup.against)))
    if cfg.aesthetic is not None:
        def fix_weights(p: str | None) -> str | None:
            return p if p in (None, "random") else fix(p)

        cfg = dataclasses.replace(cfg, aesthetic=dataclasses.replace(
            cfg.aesthetic, weights=fix_weights(cfg.aesthetic.weights), head=fix_weights(cfg.aesthetic.head)))
    if cfg.watermark is not None and cfg.watermark.classifier_weights:
        cfg = dataclasses.replace(cfg, watermark=dataclasses.replace(
            cfg.watermark, classifier_weights=fix(cfg.watermark.classifier_weights)))
    if cfg.watermark is not None and cfg.watermark.net_weights:
        cfg = dataclasses.replace(cfg, watermark=dataclasses.replace(cfg.watermark, net_weights=fix(cfg.watermark.net_weights)))
    if cfg.caption is not None:
        # model folders given relative to the working directory (a hub id "org/name" is not a folder here)
        def fix_model(p: str | None) -> str | None:
            return fix(p) if p and os.path.isdir(os.path.join(base_dir, os.path.expanduser(p))) else p

        cap = dataclasses.replace(cfg.caption, model=fix_model(cfg.caption.model), clip_model=fix_model(cfg.caption.clip_model))
        if cap.rewrite is not None:
            cap = dataclasses.replace(cap, rewrite=dataclasses.replace(cap.rewrite, model=fix_model(cap.rewrite.model)))
        cfg = dataclasses.replace(cfg, caption=cap)
    return cfg
