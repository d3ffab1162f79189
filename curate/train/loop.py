"""The training loop: `curate train JOB` (one process, or one per GPU under torchrun).

    shards --ShardStream--> x0 [B, C, T, H, W], text, mask
      t ~ logit-normal (shifted), noise ~ N(0, I), drop ~ Bernoulli(caption_dropout)   (from a generator
      seeded by (seed, rank, step): a resumed run draws what the uninterrupted run drew)
      loss = |model(x_t, t, text) - (noise - x0)|^2   (bf16 autocast on CUDA, float32 master weights)
      AdamW (linear warm-up), gradient clipping, EMA of the weights, DDP all-reduce when WORLD_SIZE > 1

Every `log_every` steps rank 0 prints the loss (all ranks), the loss in timestep bins, tokens/s and the
model FLOP utilisation (FLOPs of one forward + backward counted by torch's FlopCounterMode, over the
device's peak; on the CPU there is no peak to divide by, so only the FLOP rate is printed). Each rank
appends one line per step to OUTPUT/logs/rank{r}.jsonl. Checkpoints (OUTPUT/checkpoints/step-NNNNNN.pt
and latest.pt) hold step, weights, EMA, optimiser state and the data position; with `resume: true` a
run continues from latest.pt and reproduces the uninterrupted run's losses exactly (same world size).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from curate.config import ConfigError, apply_override, from_dict, to_dict
from curate.train import flow
from curate.train.data import ShardStream, probe, shard_urls
from curate.train.model import VideoDiT, config_for, count_params
from curate.train.model import to_dict as model_to_dict

log = logging.getLogger("curate.train")


@dataclass(frozen=True)
class ModelSection:
    size: Literal["tiny", "S", "B"] = "tiny"  # named size (model.SIZES); width/depth/heads override it
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch: tuple[int, ...] = (1, 2, 2)  # (time, height, width) in latent cells
    attention: Literal["joint", "factorized"] = "joint"
    caption_dropout: float = 0.1  # training samples whose caption becomes the learned empty-text embedding
    qk_norm: bool = True


@dataclass(frozen=True)
class DataSection:
    shards: str = "out/demo"  # a curate output folder (index.json), a folder of .tar, one .tar or a brace pattern
    batch_size: int = 8  # per rank; one latent shape per batch
    workers: int = 0  # DataLoader workers per rank
    shuffle_buffer: int = 64  # samples per reader held for shuffling
    normalize: bool = True  # apply the VAE's latent normalisation from each sample's json (when it fits)
    text_dim: int | None = None  # text embedding width; default: from the shards (32 when they have no text)

    def __post_init__(self):
        if self.batch_size < 1 or self.workers < 0 or self.shuffle_buffer < 1:
            raise ValueError("batch_size and shuffle_buffer must be >= 1, workers >= 0")


@dataclass(frozen=True)
class OptimSection:
    lr: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100  # linear warm-up of the learning rate from 0
    grad_clip: float = 1.0  # max gradient norm; 0 switches clipping off


@dataclass(frozen=True)
class FlowSection:
    logit_mean: float = 0.0  # t = sigmoid(N(logit_mean, logit_std)), then shifted
    logit_std: float = 1.0
    shift: float = 1.0  # > 1 moves t towards the noise end (bigger latents)


@dataclass(frozen=True)
class TrainConfig:
    output: str  # checkpoints and logs
    name: str = "train"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    flow: FlowSection = field(default_factory=FlowSection)
    steps: int = 1000
    seed: int = 0
    ema_decay: float = 0.999  # EMA of the weights (sampling uses it); 0 switches it off
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile the model (GPU)
    threads: int | None = None  # torch CPU threads for `curate train` (None: torch's default)
    log_every: int = 10
    checkpoint_every: int = 500  # and at the last step
    keep_checkpoints: int = 2  # step-*.pt files kept (latest.pt always)
    resume: bool = True  # continue from OUTPUT/checkpoints/latest.pt when there is one
    loss_bins: int = 4  # timestep bins of the logged loss
    peak_tflops: float | None = None  # the device's peak for MFU; default: known GPUs' dense bf16 peak

    def __post_init__(self):
        if self.steps < 1 or self.log_every < 1 or self.checkpoint_every < 1 or self.loss_bins < 1:
            raise ValueError("steps, log_every, checkpoint_every and loss_bins must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def load_train_job(path: str, overrides: list[str] = (), base_dir: str | None = None) -> TrainConfig:
    """A train job file (YAML) with `key.path=value` overrides; relative paths from `base_dir` (cwd)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read job file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"job file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"job file {path}: expected a mapping at the top")
    for item in overrides:
        apply_override(data, item)
    cfg = from_dict(TrainConfig, data)
    base = base_dir or os.getcwd()

    def fix(p: str) -> str:
        return p if "://" in p or "{" in p else os.path.abspath(os.path.join(base, os.path.expanduser(p)))

    return dataclasses.replace(cfg, output=fix(cfg.output), data=dataclasses.replace(cfg.data, shards=fix(cfg.data.shards)))


# -------------------------------------------------------------------------------------- pieces

# Dense bf16 peak FLOP/s of GPUs by name (no sparsity); MFU divides by this.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_TFLOPS.items():
        if key in name:
            return tf * 1e12
    return None


def step_flops(model: VideoDiT, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, autocast) -> int:
    """FLOPs of one forward + backward at this batch shape (torch's FlopCounterMode: matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast():
            out = model(torch.zeros_like(x), torch.full((x.shape[0],), 0.5, device=x.device), torch.zeros_like(text), mask)
        out.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The random numbers of one step on one rank: a function of (seed, rank, step) only."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


def lr_at(cfg: OptimSection, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def _save(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _same_file(src: str, dst: str) -> None:
    """`dst` becomes a second name of the written checkpoint `src` (a hard link; a copy where the file
    system has none), through a temporary name: the state is serialised once, not once a name."""
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ---------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig) -> dict:
    """Train as configured; returns a summary (this rank's per-step losses, tokens/s, MFU, checkpoint)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    urls = shard_urls(cfg.data.shards)
    info = probe(urls)
    text_dim = cfg.data.text_dim or info["text_dim"] or 32
    overrides = {k: getattr(cfg.model, k) for k in ("width", "depth", "heads") if getattr(cfg.model, k) is not None}
    mcfg = config_for(cfg.model.size, in_channels=info["in_channels"], text_dim=text_dim, patch=tuple(cfg.model.patch),
                      attention=cfg.model.attention, caption_dropout=cfg.model.caption_dropout, qk_norm=cfg.model.qk_norm,
                      **overrides)
    torch.manual_seed(cfg.seed)
    model = VideoDiT(mcfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else None
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name == "null_text" else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), fused=use_cuda or None)

    ckpt_dir = os.path.join(cfg.output, "checkpoints")
    latest = os.path.join(ckpt_dir, "latest.pt")
    start = 0
    if cfg.resume and os.path.exists(latest):
        state = torch.load(latest, map_location=device, weights_only=False)
        arch = lambda d: {k: v for k, v in d.items() if k != "caption_dropout"}  # noqa: E731 (a training setting)
        if arch(state["model_config"]) != arch(model_to_dict(mcfg)):
            raise ConfigError(f"{latest} was trained with model {state['model_config']}, this job builds {model_to_dict(mcfg)}; "
                              f"set another output or resume: false")
        model.load_state_dict(state["model"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        if state["data"]["world"] != world and rank == 0:
            log.warning("resuming a %d-rank run on %d ranks: the data order differs from an uninterrupted run", state["data"]["world"], world)
    if rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        log.info("model %s: %.2f M parameters %s; shards %d, latent shapes %s, text %s",
                 cfg.model.size, count_params(model) / 1e6, model_to_dict(mcfg), len(urls), info["latent_shapes"],
                 f"{info['text_len']}x{info['text_dim']} ({info['text_encoder']})" if info["text_dim"] else "none (unconditional)")
    if world > 1:
        dist.barrier()
    logs = os.path.join(cfg.output, "logs")
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, f"rank{rank}.jsonl")
    kept = []
    if os.path.exists(log_path):
        with open(log_path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] < start]
    log_file = open(log_path, "w")
    log_file.writelines(kept)

    net = model
    if cfg.compile:
        net = torch.compile(net)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if use_cuda else None)

    stream = ShardStream(urls, cfg.data.batch_size, text_dim, rank=rank, world=world, seed=cfg.seed,
                         shuffle_buffer=cfg.data.shuffle_buffer, start_batch=start, normalize_latents=cfg.data.normalize)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.data.workers, pin_memory=use_cuda,
                                         persistent_workers=cfg.data.workers > 0)
    batches = iter(loader)
    peak = peak_flops(device, cfg.peak_tflops)
    flops_cache: dict[tuple, int] = {}
    losses: list[float] = []
    window = {"t": [], "loss": [], "tokens": 0, "flops": 0, "steps": 0, "time": 0.0}
    rates: list[dict] = []
    fm = cfg.flow

    for step in range(start, cfg.steps):
        batch = next(batches)
        x = batch["x"].to(device, non_blocking=True)
        text = batch["text"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        key = (tuple(x.shape), text.shape[1])
        if key not in flops_cache:
            flops_cache[key] = step_flops(model, x, text, mask, autocast)
        if use_cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        g = step_generator(cfg.seed, rank, step)
        b = x.shape[0]
        t = flow.sample_t(b, g, fm.logit_mean, fm.logit_std, fm.shift).to(device)
        noise = torch.randn(x.shape, generator=g).to(device)
        drop = (torch.rand(b, generator=g) < mcfg.caption_dropout).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg.optim, step)
        with autocast():
            per_sample = flow.flow_loss(net, x, noise, t, text=text, mask=mask, drop=drop)
        loss = per_sample.mean()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        value = float(loss.detach())
        if use_cuda:
            torch.cuda.synchronize(device)
        window["time"] += time.perf_counter() - t0
        losses.append(value)
        tokens = b * math.prod(model.grid(x.shape))
        window["t"] += t.tolist()
        window["loss"] += per_sample.detach().float().tolist()
        window["tokens"] += tokens
        window["flops"] += flops_cache[key]
        window["steps"] += 1
        log_file.write(json.dumps({"step": step, "loss": value, "batch": b, "shape": list(x.shape),
                                   "keys": batch["keys"], "epochs": batch["epochs"], "lr": lr_at(cfg.optim, step),
                                   "grad_norm": float(grad_norm) if grad_norm is not None else None}) + "\n")
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            rates.append(_report(window, done, cfg, world, rank, peak, device))
            window = {"t": [], "loss": [], "tokens": 0, "flops": 0, "steps": 0, "time": 0.0}
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            if rank == 0:
                state = {"step": done, "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                         "optimizer": opt.state_dict(), "data": {"batches": done, "world": world},
                         "config": to_dict(cfg), "model_config": model_to_dict(mcfg),
                         "data_info": {k: v for k, v in info.items() if k != "latent_shapes"} | {"latent_shapes": [list(s) for s in info["latent_shapes"]]}}
                path = os.path.join(ckpt_dir, f"step-{done:06d}.pt")
                _save(path, state)
                _same_file(path, latest)
                old = sorted(f for f in os.listdir(ckpt_dir) if f.startswith("step-") and f.endswith(".pt"))
                for f in old[: max(0, len(old) - cfg.keep_checkpoints)]:
                    os.remove(os.path.join(ckpt_dir, f))
            if world > 1:
                dist.barrier()
    log_file.close()
    if world > 1:
        dist.barrier()
    return {"rank": rank, "world": world, "start_step": start, "steps": cfg.steps, "losses": losses,
            "batches": len(losses), "rates": rates, "checkpoint": latest, "params": count_params(model),
            "param_sum": float(sum(p.detach().double().sum() for p in model.parameters()))}


def _report(w: dict, step: int, cfg: TrainConfig, world: int, rank: int, peak: float | None, device) -> dict:
    """Reduce a log window over the ranks; rank 0 prints it. Returns tokens/s, FLOP/s and MFU."""
    n_bins = cfg.loss_bins
    sums = torch.zeros(2 + 2 * n_bins + 3, dtype=torch.float64)
    sums[0], sums[1] = sum(w["loss"]), len(w["loss"])
    for i in range(n_bins):
        lo, hi = i / n_bins, (i + 1) / n_bins
        sel = [l for t, l in zip(w["t"], w["loss"]) if lo <= t < hi or (i == n_bins - 1 and t >= 1.0)]
        sums[2 + 2 * i], sums[3 + 2 * i] = sum(sel), len(sel)
    sums[-3], sums[-2], sums[-1] = w["tokens"], w["flops"], w["time"]
    if world > 1:
        sums_dev = sums.to(device) if device.type == "cuda" else sums
        dist.all_reduce(sums_dev)
        sums = sums_dev.cpu()
    loss = sums[0] / max(1, sums[1])
    bins = [float(sums[2 + 2 * i] / sums[3 + 2 * i]) if sums[3 + 2 * i] else None for i in range(n_bins)]
    seconds = float(sums[-1]) / world  # mean step time per rank
    tok_s = float(sums[-3]) / seconds if seconds else 0.0
    flop_s = float(sums[-2]) / seconds if seconds else 0.0
    mfu = flop_s / (peak * world) if peak else None
    if rank == 0:
        edges = [f"{i / n_bins:.2f}-{(i + 1) / n_bins:.2f}: {'-' if b is None else f'{b:.4f}'}" for i, b in enumerate(bins)]
        speed = f"{tok_s:,.0f} tokens/s, {flop_s / 1e12:.3f} TFLOP/s"
        speed += f", MFU {100 * mfu:.1f}%" if mfu is not None else " (MFU: no peak known for this device; set peak_tflops)"
        print(f"step {step}/{cfg.steps} loss {loss:.4f} | by t {' '.join(edges)} | {speed}", flush=True)
    return {"step": step, "loss": float(loss), "loss_bins": bins, "tokens_per_s": tok_s, "flops_per_s": flop_s, "mfu": mfu}
