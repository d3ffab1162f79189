"""The loop: a resumed run continues the uninterrupted run's loss curve exactly; 2-process DDP on the CPU
(gloo) gives both ranks the same number of batches from uneven shards and finishes."""

import json
import os
import socket

import numpy as np
import pytest
import torch

from curate.train.loop import DataSection, ModelSection, OptimSection, TrainConfig, load_train_job, train
from tests.train_shards import random_clips, write_shards

SHAPES = ((4, 2, 4, 4), (4, 1, 4, 6))


def shards(folder, per_shard=(3, 2, 2)) -> str:
    rng = np.random.default_rng(1)
    clips = random_clips(sum(per_shard), SHAPES)
    for c in clips[::2]:  # half the clips captioned (text embeddings), half not
        c["text_emb"], c["text_mask"] = rng.standard_normal((6, 16)), (np.arange(6) < 4).astype(np.uint8)
    write_shards(folder, clips, list(per_shard))
    return str(folder)


def config(data: str, out: str, steps: int, **kw) -> TrainConfig:
    return TrainConfig(output=out, steps=steps, seed=kw.pop("seed", 3), log_every=4, checkpoint_every=100, ema_decay=0.9,
                       model=ModelSection(size="tiny", attention=kw.pop("attention", "joint")),
                       data=DataSection(shards=data, batch_size=2, shuffle_buffer=3, workers=kw.pop("workers", 0)),
                       optim=OptimSection(lr=1e-3, warmup_steps=3), **kw)


def losses(out: str, rank: int = 0) -> list[float]:
    with open(os.path.join(out, "logs", f"rank{rank}.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("attention", ["joint", "factorized"])
def test_resume_continues_the_same_loss_curve(tmp_path, one_thread, attention):
    data = shards(tmp_path / "data")
    whole = train(config(data, str(tmp_path / "whole"), 12, attention=attention))
    first = train(config(data, str(tmp_path / "parts"), 5, attention=attention))
    rest = train(config(data, str(tmp_path / "parts"), 12, attention=attention))  # resume: true by default
    assert first["start_step"] == 0 and rest["start_step"] == 5 and rest["batches"] == 7
    assert first["losses"] + rest["losses"] == whole["losses"]  # exact: weights, Adam, EMA, data position, noise
    assert losses(str(tmp_path / "parts")) == whole["losses"]  # the log was continued, not appended twice
    a = torch.load(tmp_path / "whole" / "checkpoints" / "latest.pt", weights_only=False)
    b = torch.load(tmp_path / "parts" / "checkpoints" / "latest.pt", weights_only=False)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    # and a run that did not resume would differ (the check can fail)
    fresh = train(config(data, str(tmp_path / "fresh"), 5, attention=attention, seed=4))
    assert fresh["losses"] != whole["losses"][:5]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    done = train(config(data, out, 6, device="cpu"))
    with open(os.path.join(out, f"done{rank}.json"), "w") as f:
        json.dump({k: done[k] for k in ("batches", "param_sum", "world")}, f)


@pytest.mark.timeout(180)
def test_two_process_ddp_on_cpu_sees_equal_batches_and_finishes(tmp_path):
    # 3 shards for 2 ranks: rank 0 reads 2 shards an epoch, rank 1 one (uneven on purpose)
    data = shards(tmp_path / "data", (4, 1, 2))
    out = str(tmp_path / "ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children start with torch imported (spawn would import it again, seconds on a busy machine)
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, port, data, out), nprocs=2, join=True, start_method="fork")
    done = [json.load(open(os.path.join(out, f"done{r}.json"))) for r in range(2)]
    assert [d["batches"] for d in done] == [6, 6] and all(d["world"] == 2 for d in done)
    assert done[0]["param_sum"] == done[1]["param_sum"]  # DDP kept the replicas equal
    logs = [[json.loads(line) for line in open(os.path.join(out, "logs", f"rank{r}.jsonl"))] for r in range(2)]
    assert [len(x) for x in logs] == [6, 6]
    epoch0 = [{k for line in x for k, e in zip(line["keys"], line["epochs"]) if e == 0} for x in logs]
    assert epoch0[0] and epoch0[1] and not epoch0[0] & epoch0[1]  # the ranks read different shards
    assert os.path.exists(os.path.join(out, "checkpoints", "latest.pt"))


def test_train_job_files_load(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    for name in ("train-tiny.yaml", "train-S.yaml", "train-B.yaml"):
        cfg = load_train_job(os.path.join(root, "jobs", name), [f"output={tmp_path}"])
        assert cfg.output == str(tmp_path) and os.path.isabs(cfg.data.shards)
    from curate.config import ConfigError

    with pytest.raises(ConfigError, match="model.sizes: unknown key"):
        load_train_job(os.path.join(root, "jobs", "train-tiny.yaml"), ["model.sizes=B"])
    with pytest.raises(ConfigError, match="model.size"):
        load_train_job(os.path.join(root, "jobs", "train-tiny.yaml"), ["model.size=XL"])
