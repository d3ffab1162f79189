"""The README's `ray job submit` line against a `ray start --head` cluster with one worker node.

Both nodes run on this machine, each under `ray start --block` in its own process session, with a
dedicated temp dir and ports picked free here: the test stops them by signalling that session, never
with `ray stop` (which would end every Ray process on the machine, the test session's own included).
"""

from __future__ import annotations

import json
import os
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from curate.catalog import query
from tests.conftest import ROOT

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent  # the venv's `ray` and `curate`


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _env(temp: Path) -> dict:
    """Environment of the nodes and of the `ray` commands: this checkout, this venv, a token of its own.

    Token auth is set explicitly: Ray 2.59+ turns it on in `ray start --head` whenever ~/.ray/auth_token
    exists (any local `ray.init()` writes it), but the jobs CLI sends the token only when RAY_AUTH_MODE
    is `token`. A token file of the test's own keeps it independent of what else ran on the machine.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["RAY_TMPDIR"] = str(temp)
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN_PATH"] = "token", str(token)
    return env


def _ray(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`ray start --block ARGS`, in a session of its own (the group the test signals to stop it)."""
    ports = _free_ports(6)
    own = [f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}", f"--metrics-export-port={ports[2]}",
           f"--dashboard-agent-listen-port={ports[3]}", f"--dashboard-agent-grpc-port={ports[4]}", f"--runtime-env-agent-port={ports[5]}"]
    with open(log, "ab") as f:
        return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args, *own],
                                env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the node's session, then SIGKILL to what is left (a raylet drains for 30 s otherwise)."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers the raylet started and left behind
    except ProcessLookupError:
        pass


def _wait(what: str, ok, timeout: float, nodes: list[subprocess.Popen], logs: Path):
    deadline = time.time() + timeout
    while time.time() < deadline:
        dead = [p for p in nodes if p.poll() is not None]
        assert not dead, f"a `ray start` exited: {[l.read_text()[-2000:] for l in sorted(logs.glob('*.log'))]}"
        try:
            got = ok()
        except OSError:  # the dashboard not up yet (an HTTP error still means it is)
            got = None
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def _ray_list(what: str, url: str, env: dict, *filters: str, check: bool = True) -> list[dict]:
    """`ray list WHAT` as rows ([] when the CLI answers "No resource in the cluster", or fails and not `check`)."""
    args = ["list", what, "--address", url, "--limit", "10000", "--format", "json"]
    got = _ray(args + [a for f in filters for a in ("--filter", f)], env)
    assert got.returncode == 0 or not check, got.stderr[-2000:]
    return json.loads(got.stdout) if got.returncode == 0 and got.stdout.lstrip().startswith("[") else []


def _dashboard_up(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/api/version", timeout=2).status == 200
    except urllib.error.HTTPError:  # 401 without a token: up
        return True


def test_ray_job_submit_runs_the_demo_on_a_head_and_a_worker_node(tmp_path):
    temp = Path("/tmp") / f"crs{os.getpid()}"  # short: Ray's socket paths must stay under 107 characters
    temp.mkdir()
    out = tmp_path / "out"
    env = _env(temp)
    gcs, dashboard, client = _free_ports(3)
    url = f"http://127.0.0.1:{dashboard}"
    nodes = []
    t0 = time.time()
    try:
        nodes.append(_node(["--head", f"--port={gcs}", "--num-cpus=1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}", f"--temp-dir={temp}"],
                           env, tmp_path / "head.log"))
        _wait("the head's dashboard", lambda: _dashboard_up(url), 120, nodes, tmp_path)
        nodes.append(_node([f"--address=127.0.0.1:{gcs}", "--num-cpus=1"], env, tmp_path / "worker.log"))
        alive = _wait("two nodes alive", lambda: (n := _ray_list("nodes", url, env, "state=ALIVE", check=False)) and len(n) == 2 and n, 120, nodes, tmp_path)
        worker = next(n["node_id"] for n in alive if not n["is_head_node"])
        started = time.time() - t0

        # The README's line, as a user types it from the checkout (a unique id to look the job up by).
        sid = f"curate-demo-{os.getpid()}"
        try:
            submit = _ray(["job", "submit", "--address", url, "--submission-id", sid, "--working-dir", ".", "--",
                           "curate", "run", "jobs/demo.yaml", "--set", f"output={out}", "--set", "split.encode.preset=ultrafast"],
                          env, timeout=300)
        except subprocess.TimeoutExpired as e:
            # Usually a task that fits in no single node (resources planned from the cluster's total): say so.
            usage = _ray(["status", "-v", "--address", f"127.0.0.1:{gcs}"], env).stdout
            tail = ((e.stdout or b"") + (e.stderr or b"")).decode(errors="replace")[-3000:]
            raise AssertionError(f"the job did not finish in 300 s; cluster:\n{usage[-2500:]}\njob log:\n{tail}") from None
        logs = submit.stdout + submit.stderr
        status = _ray(["job", "status", "--address", url, sid], env)
        assert submit.returncode == 0 and f"Job '{sid}' succeeded" in status.stdout + status.stderr, logs[-4000:]
        ran = time.time() - t0 - started

        # The job's output, as a user reads it: kept clips in the clips table, all of them in shards on disk.
        summary = json.loads((out / "summary.json").read_text())
        kept = json.loads(query(str(out), "select count(*) as n from clips where status = 'kept' and shard is not null", "json"))[0]["n"]
        shards = json.loads(query(str(out), "select shard, n_samples from shards", "json"))
        assert kept > 0 and summary["clips_kept"] == kept and summary["shards"] == len(shards)
        assert sum(s["n_samples"] for s in shards) == kept and all((out / s["shard"]).is_file() for s in shards)

        # Ray Data spread the work: the worker node ran some of the job's tasks.
        on_worker = _ray_list("tasks", url, env, f"node_id={worker}", "state=FINISHED")
        assert on_worker, "no task ran on the worker node"
        print(f"cluster up {started:.1f} s, job {ran:.1f} s, {kept} kept clips in {len(shards)} shards, "
              f"{len(on_worker)} tasks on the worker node")
    finally:
        for proc in reversed(nodes):
            _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)
