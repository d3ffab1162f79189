"""`curate` command line: run a job, query its tables.

    curate run JOB [--set key.path=value ...] [--address ADDR]
    curate query OUT "SQL" [--format table|csv|json]
    curate verify OUT
    curate takedown OUT --source ID_OR_URI [--reason TEXT]
    curate report OUT
    curate models make-tiny DIR
    curate train JOB [--set key.path=value ...]
    curate sample CKPT [--prompt TEXT] [--out FILE.mp4]

Exit codes: 0 the job ran (per-input errors are rows in `sources`); 2 a bad job file, override or
input location, an output folder another run is writing, or a failed query, with a one-line message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


def _run(args: argparse.Namespace) -> int:
    from curate.config import load_job, resolve_paths
    from curate.pipeline import configure_logging, run_job

    configure_logging(args.verbose)
    cfg = resolve_paths(load_job(args.job, args.set or []), os.getcwd())
    with contextlib.nullcontext() if args.verbose else native_stderr_to_file():
        summary = run_job(cfg, address=args.address)
    print(summary.text())
    return 0


@contextlib.contextmanager
def native_stderr_to_file():
    """What native code and other libraries write to the process's stderr (Ray's C++ core, its Python
    warnings, ffmpeg) goes to a log file; curate's own lines, Python's `sys.stderr` (tracebacks) stay on
    the terminal. Only when file descriptor 2 is a terminal or pipe of ours (not under pytest capture)."""
    import logging
    import tempfile

    try:
        sys.stderr.flush()
        native = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stderr (tests): leave it alone
        yield
        return
    path = os.path.join(tempfile.gettempdir(), f"curate-{os.getpid()}-stderr.log")
    saved = os.dup(native)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    ours = os.fdopen(os.dup(saved), "w", buffering=1)
    old = sys.stderr
    os.dup2(log_fd, native)
    sys.stderr = ours
    moved = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.stream is old]
    for h in moved:
        h.setStream(ours)
    logging.getLogger("curate").debug("native stderr -> %s", path)
    try:
        yield
    finally:
        for h in moved:
            h.setStream(old)
        sys.stderr = old
        ours.flush()
        os.dup2(saved, native)
        os.close(saved)
        os.close(log_fd)
        ours.close()
        if os.path.getsize(path) == 0:
            os.remove(path)


def _query(args: argparse.Namespace) -> int:
    from curate.catalog import query

    text = query(args.out, args.sql, args.format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from curate.verify import verify

    problems = verify(args.out)
    for p in problems:
        print(p)
    if problems:
        print(f"curate verify: {len(problems)} problem{'s' if len(problems) != 1 else ''} in {args.out}", file=sys.stderr)
        return 1
    print(f"curate verify: {args.out} is consistent")
    return 0


def _takedown(args: argparse.Namespace) -> int:
    from curate.takedown import takedown

    done = takedown(args.out, args.source, args.reason)
    print(f"curate takedown: source {', '.join(done['source_ids'])}: {done['clips_removed']} clips removed, "
          f"{len(done['shards_rewritten'])} shards rewritten ({done['time']:%Y-%m-%dT%H:%M:%SZ})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from curate.report import write_report

    print(write_report(args.out))
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from curate.tiny import make_tiny

    for name, folder in make_tiny(args.dir, seed=args.seed, only=args.only).items():
        print(f"{name}\t{folder}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import logging

    import torch

    from curate.train.loop import load_train_job, train

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    cfg = load_train_job(args.job, args.set or [])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    done = train(cfg)
    if done["rank"] == 0:
        last = done["rates"][-1] if done["rates"] else {}
        print(f"curate train: steps {done['start_step']}..{done['steps']} on {done['world']} rank(s), "
              f"last loss {last.get('loss', float('nan')):.4f}, checkpoint {done['checkpoint']}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from curate.train.sample import sample

    shape = tuple(int(v) for v in args.latent_shape.split("x")) if args.latent_shape else None
    if shape is not None and len(shape) != 3:
        raise ValueError(f"--latent-shape expects TxHxW, got {args.latent_shape!r}")
    done = sample(args.ckpt, args.prompt, args.out, steps=args.steps, guidance=args.guidance, seed=args.seed,
                  latent_shape=shape, vae=args.vae, text_model=args.text_model, text_encoder=args.text_encoder,
                  weights=args.weights, fps=args.fps)
    print(f"curate sample: {done['mp4']} ({done['frames']} frames {done['size'][1]}x{done['size'][0]}, latent "
          f"{'x'.join(map(str, done['latent_shape']))} in {done['latent']}, "
          f"{'prompt ' + repr(done['prompt']) if done['conditional'] else 'unconditional'})")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="curate", description="Video dataset curation for video diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job file")
    run.add_argument("job", help="job file (YAML), e.g. jobs/demo.yaml")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a job key (dotted path, YAML value); repeatable")
    run.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)

    q = sub.add_parser("query", help="SQL over a job's tables (views: sources, scenes, clips, shards)")
    q.add_argument("out", help="the job's output folder")
    q.add_argument("sql")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.set_defaults(func=_query)

    v = sub.add_parser("verify", help="re-read every shard; check sha256, sample keys, licences and the tables")
    v.add_argument("out", help="the job's output folder")
    v.set_defaults(func=_verify)

    t = sub.add_parser("takedown", help="remove a source's clips from the shards and record it")
    t.add_argument("out", help="the job's output folder")
    t.add_argument("--source", required=True, metavar="ID_OR_URI", help="source_id, sha256, uri or source_url")
    t.add_argument("--reason", help="why (recorded in the takedowns table and the data card)")
    t.set_defaults(func=_takedown)

    r = sub.add_parser("report", help="(re)write OUT/report.html from a job's tables")
    r.add_argument("out", help="the job's output folder")
    r.set_defaults(func=_report)

    m = sub.add_parser("models", help="model files for offline trials")
    msub = m.add_subparsers(dest="models_command", required=True)
    t = msub.add_parser("make-tiny", help="write tiny randomly initialised models of real classes (vlm, clip) under DIR")
    t.add_argument("dir", help="folder to write DIR/vlm, DIR/clip into")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--only", action="append", metavar="NAME", help="write only this model (repeatable)")
    t.set_defaults(func=_make_tiny)

    tr = sub.add_parser("train", help="train the reference video diffusion transformer on shards (torchrun for DDP)")
    tr.add_argument("job", help="train job file (YAML), e.g. jobs/train-tiny.yaml")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a job key (dotted path, YAML value); repeatable")
    tr.add_argument("-v", "--verbose", action="store_true")
    tr.set_defaults(func=_train)

    sa = sub.add_parser("sample", help="sample a trained checkpoint: prompt -> latents -> VAE decode -> mp4")
    sa.add_argument("ckpt", help="a checkpoint, e.g. out/train-tiny/checkpoints/latest.pt")
    sa.add_argument("--prompt", help="caption to condition on (needs a model trained with text); none: unconditional")
    sa.add_argument("--out", default="sample.mp4", help="mp4 to write (the latent goes beside it as .npy)")
    sa.add_argument("--steps", type=int, default=50, help="Euler steps")
    sa.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1: none)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--latent-shape", metavar="TxHxW", help="latent frames x height x width (default: the first training shape)")
    sa.add_argument("--vae", help="save_pretrained VAE folder (default: the VAE the shards name)")
    sa.add_argument("--text-model", help="text encoder (hub id or folder) that embedded the shards' captions (default: from the shards' job.yaml)")
    sa.add_argument("--text-encoder", choices=["t5", "clip"], help="its kind (with --text-model)")
    sa.add_argument("--weights", choices=["ema", "model"], default="ema")
    sa.add_argument("--fps", type=float, help="frame rate of the mp4 (default: the shards' latent_fps)")
    sa.set_defaults(func=_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from curate.config import ConfigError
    from curate.inputs import InputError
    from curate.release import TakedownError
    from curate.storage import OutputBusy
    from curate.train.data import DataError
    from curate.train.sample import SampleError
    from stages.caption import WeightsError
    from stages.latents import WeightsError as VAEWeightsError

    try:
        return args.func(args)
    except (ConfigError, InputError, OutputBusy, FileNotFoundError, TakedownError, WeightsError, VAEWeightsError, DataError, SampleError) as e:
        print(f"curate: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a failed query: DuckDB's own message says what is wrong
        if type(e).__module__.startswith("duckdb"):
            print(f"curate: query failed: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
