"""Nothing lost: a killed run resumes to the same output, a lost worker costs nothing, one writer."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curate.catalog import query
from curate.cli import main
from curate.samples import SamplesConfig, generate_samples
from tests.conftest import ROOT, busy_cpu

pytestmark = pytest.mark.ray

JOB = str(ROOT / "jobs" / "demo.yaml")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    generate_samples(str(folder), SamplesConfig(n_videos=3))
    return folder


def args(inputs: Path, out: Path) -> list[str]:
    return ["run", JOB, "--set", f"input.dir={inputs}", "--set", "input.license=CC0-1.0", "--set", f"output={out}",
            "--set", "split.encode.preset=ultrafast", "--set", "shards.max_samples=3"]


def state(out: Path) -> dict:
    """Everything a run decides, minus where its own folder is."""
    tables = {
        t: json.loads(query(str(out), f"select * from {t} order by all", "json")) for t in ("sources", "scenes", "clips", "shards")
    }
    for row in tables["clips"]:
        row["clip_uri"] = row["clip_uri"] and os.path.relpath(row["clip_uri"], out)
        for col in ("latent_uri", "latent_logvar_uri", "text_emb_uri", "text_mask_uri"):  # files under the output too
            row[col] = row.get(col) and os.path.relpath(row[col], out)
    shards = {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
    return {"tables": tables, "shards": shards}


@pytest.fixture(scope="module")
def whole(inputs, ray_session, tmp_path_factory):
    """One quiet uninterrupted run: its folder, its wall time and its state."""
    out = tmp_path_factory.mktemp("whole")
    t0 = time.time()
    assert main(args(inputs, out)) == 0
    return out, time.time() - t0, state(out)


@pytest.fixture(scope="module")
def uninterrupted(whole):
    return whole[2]


def assert_same_state(got: dict, want: dict) -> None:
    """state(out) == want, failing with the cells that differ (table, row, column) rather than a blob."""
    diffs = []
    for table, rows in want["tables"].items():
        mine = got["tables"][table]
        if len(mine) != len(rows):
            diffs.append(f"{table}: {len(mine)} rows, want {len(rows)}")
            continue
        for k, (a, b) in enumerate(zip(mine, rows)):
            diffs += [f"{table}[{k}].{c}: {a.get(c)!r} != {b.get(c)!r}" for c in sorted(set(a) | set(b)) if a.get(c) != b.get(c)]
    if got["shards"] != want["shards"]:
        diffs.append(f"shards differ: {sorted(n for n in set(got['shards']) | set(want['shards']) if got['shards'].get(n) != want['shards'].get(n))}")
    assert not diffs, "\n".join(diffs[:40])


def _ray_free_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


# Kill points, from early to late: each a file whose appearance means the run got that far.
KILL_WHEN = {
    "job file written": lambda out: (out / "job.yaml").exists(),
    "first clip written": lambda out: (out / "clips").exists() and any((out / "clips").glob("*.mp4")),
    "first source done": lambda out: any((out / "commit" / "split").glob("*/part-*.parquet")) if (out / "commit").exists() else False,
    "first caption committed": lambda out: any((out / "commit" / "caption").glob("*/part-*.parquet")) if (out / "commit").exists() else False,
    "first shard written": lambda out: (out / "shards").exists() and any((out / "shards").glob("*.tar")),
}


def _kill_everything_of(marker: str) -> None:
    """SIGKILL every process whose environment carries `marker` (the killed run's Ray and ffmpeg too)."""
    for _ in range(50):
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    alive.append(int(pid))
            except OSError:
                continue
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


# Every kill point once; "first source done" with the CPU saturated (the busy-machine case, where a kill
# lands in other states of the run's workers), the others on a quiet machine.
@pytest.mark.parametrize("when, loaded", [(w, w == "first source done") for w in KILL_WHEN])
def test_killed_run_resumes_to_the_same_output(when, loaded, inputs, uninterrupted, ray_session, tmp_path):
    """Killed at each point, resumed: the same tables and shard bytes as a quiet uninterrupted run; with
    `loaded`, the killed run and the resume run while other processes saturate the CPU."""
    with busy_cpu(nice=15) if loaded else contextlib.nullcontext():  # as low as Ray's own workers
        _kill_and_resume(when, inputs, uninterrupted, tmp_path)


def _kill_and_resume(when, inputs, uninterrupted, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "curate.cli", *args(inputs, out), "--set", "ray.num_cpus=1"]
    ray_tmp = Path("/tmp") / f"crk{os.getpid()}{abs(hash(when)) % 1000}"  # marks every process of the run
    env = _ray_free_env() | {"RAY_TMPDIR": str(ray_tmp)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if KILL_WHEN[when](out):
            os.kill(proc.pid, signal.SIGKILL)  # the driver, without warning
            killed = True
            break
        time.sleep(0.01)
    proc.wait()
    # A driver killed for real leaves its Ray workers dying for a moment; the product copes with that
    # (nothing a dying run half-wrote is trusted), but the test machine should not keep them.
    _kill_everything_of(f"RAY_TMPDIR={ray_tmp}")
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if not killed:
        pytest.skip(f"the run finished before '{when}' could be caught")  # never seen; keeps the test honest
    assert not (out / "summary.json").exists()
    if (out / "commit").exists():  # a killed run's commits can be queried
        seen = json.loads(query(str(out), "select count(*) as n from committed_sources", "json"))[0]["n"]
        assert seen >= (3 if when == "first shard written" else 0)
    # what the killed run committed (each step's results) is reused, not made again
    committed = {p: p.stat().st_mtime_ns for p in (out / "commit").rglob("part-*.parquet")
                 if p.parts[-3] not in ("sources", "clips")} if (out / "commit").exists() else {}
    assert main(args(inputs, out)) == 0
    assert_same_state(state(out), uninterrupted)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert {p: p.stat().st_mtime_ns for p in committed if p.exists()} == committed


def test_rerun_of_a_finished_job_redoes_nothing(inputs, whole):
    """Run again over the uninterrupted run's own folder: nothing is made again, nothing changes."""
    out, first, want = whole
    times = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".mp4", ".tar", ".npy")}
    t0 = time.time()
    assert main(args(inputs, out)) == 0
    again = time.time() - t0
    assert times and {p: p.stat().st_mtime_ns for p in times} == times  # no clip, shard or latent written again
    assert_same_state(state(out), want)
    print(f"first run {first:.1f} s, rerun {again:.2f} s ({again / first:.1%})")


def test_a_rerun_finds_committed_sources_first_and_reads_them_back_in_blocks(inputs, whole, monkeypatch):
    """The per-wave look ahead (`committed_sources`) finds every source a finished run committed, and not
    one whose file changed since; IngestSplit reads a block of committed sources back without splitting
    any (one lookup for the block), and splits again the one whose clip file went missing. Over the
    uninterrupted run's folder, read only: the input's time and the clip file are put back after."""
    videos = sorted(str(p) for p in inputs.glob("*.mp4"))
    changed, times = Path(videos[0]), (Path(videos[0]).stat().st_atime_ns, Path(videos[0]).stat().st_mtime_ns)
    aside: list[str] = []
    try:
        _read_back(inputs, whole[0], videos, changed, aside, monkeypatch)
    finally:
        os.utime(changed, ns=times)
        for gone in aside:
            os.rename(gone + ".aside", gone)


def _read_back(inputs, out, videos, changed, aside, monkeypatch):
    import pyarrow as pa

    from curate.commit import run_stamp
    from curate.config import load_job
    from curate.plan import IngestSplit, committed_sources

    cfg = load_job(JOB, [a for a in args(inputs, out)[3::2]])
    rows = pa.table({"uri": videos, "license": ["CC0-1.0"] * len(videos), "title": [None] * len(videos), "author": [None] * len(videos),
                     "source_url": [None] * len(videos), "attribution": [None] * len(videos)})
    assert committed_sources(cfg, rows, str(out), run_stamp()).to_pylist() == [True] * len(videos)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert committed_sources(cfg, rows, str(out), run_stamp()).to_pylist() == [False] + [True] * (len(videos) - 1)

    split = IngestSplit(cfg.split, str(out))
    monkeypatch.setattr(IngestSplit, "split_source", lambda self, row: (_ for _ in ()).throw(AssertionError(f"split {row['uri']}")))
    back = split(rows.slice(1))
    assert back["_todo"].to_pylist() == [False] * (len(videos) - 1) and back["uri"].to_pylist() == videos[1:]
    want = json.loads(query(str(out), "select source_id, count(*) n from clips group by all order by all", "json"))
    got = sorted((r["source_id"], len(r["clips"])) for r in back.select(["source_id", "clips"]).to_pylist())
    assert got == sorted((r["source_id"], r["n"]) for r in want if r["source_id"] in dict(got))

    gone = next(c["clip_uri"] for c in back["clips"][0].as_py() if c["clip_uri"])  # a clip file of videos[1]
    assert gone.startswith(str(out))
    os.rename(gone, gone + ".aside")
    aside.append(gone)
    redone = []
    monkeypatch.setattr(IngestSplit, "split_source", lambda self, row: redone.append(row["uri"]) or {**row, "source_id": "x", "status": "error",
                                                                                                      "reason": "unreadable", "scenes": [], "clips": []})
    split(rows.slice(1))
    assert redone == [videos[1]]


def _worker_pids(title: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("ray::") and title in cmdline:
                pids.append(int(pid))
    return pids


def test_a_lost_worker_costs_nothing(inputs, uninterrupted, ray_session, tmp_path):
    out = tmp_path / "out"
    killed: list[int] = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for pid in _worker_pids("MapBatches(_task)"):  # the split and the CPU steps' tasks
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    assert main(args(inputs, out)) == 0
    thread.join()
    assert killed, "no split worker was seen to kill"
    assert_same_state(state(out), uninterrupted)


def test_a_second_writer_is_refused(tmp_path, capsys):
    from curate.storage import Output, OutputBusy

    out = Output(str(tmp_path / "busy"))
    with out.lock():
        with pytest.raises(OutputBusy, match="in use by another curate run"):
            with Output(str(tmp_path / "busy")).lock():
                pass
        code = subprocess.run(
            [sys.executable, "-m", "curate.cli", "run", JOB, "--set", f"output={tmp_path / 'busy'}"],
            env=_ray_free_env(), capture_output=True, text=True,
        )
        assert code.returncode == 2
        assert "is in use by another curate run" in code.stderr and '"pid"' in code.stderr
    with out.lock():  # released when the holder is done
        pass


def test_a_lost_node_costs_nothing(inputs, uninterrupted, tmp_path):
    out = tmp_path / "out"
    ray_tmp = Path("/tmp") / f"crt{os.getpid()}"  # short: Ray's socket paths must stay under 107 chars
    env = _ray_free_env() | {"RAY_TMPDIR": str(ray_tmp)}
    overrides = args(inputs, out)[2:]
    sets = [overrides[i + 1] for i in range(0, len(overrides), 2)]
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "integration" / "multinode_run.py"), str(out), JOB, *sets],
            env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the report is the last JSON line: Ray's own messages (a task retried after the node went) may follow it
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report["removed_node"], "the worker node was not removed during the run"
    assert_same_state(state(out), uninterrupted)


def test_the_end_of_a_run_folds_step_logs_in_ray_tasks(ray_session, tmp_path, monkeypatch):
    """`finalize.compact` folds each step's log in a Ray task of its own (not on the driver); steps
    without a log are skipped; a log of few parts is left as it is."""
    from types import SimpleNamespace

    import pyarrow as pa

    import curate.commit as commit
    from curate.finalize import compact

    many, few = commit.CommitLog(str(tmp_path), "motion", "k"), commit.CommitLog(str(tmp_path), "watermark", "k")
    for b in range(70):
        many.write(pa.table({"id": [f"c{b:02d}"], "match": [None], "motion_score": [float(b)]}), run=1)
    few.write(pa.table({"id": ["c00"], "match": [None], "watermark_score": [0.1]}), run=1)
    monkeypatch.setattr(commit.CommitLog, "compact", lambda self, min_parts=64: pytest.fail("folded on the driver"))
    steps = [SimpleNamespace(name="motion", key="k"), SimpleNamespace(name="select", key=None), SimpleNamespace(name="watermark", key="k")]
    assert compact(str(tmp_path), steps) == 1  # the workers import the module afresh: the patch is the driver's only
    assert len(many.parts()) == 1 and len(few.parts()) == 1
    assert sorted(many.read()["motion_score"].to_pylist()) == [float(b) for b in range(70)]
