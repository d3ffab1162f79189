"""Run a job on a local multi-node Ray cluster and remove a worker node part way (run as a script).

    python tests/integration/multinode_run.py OUT JOB_ARGS...

Started by test_resume.py in a subprocess with its own RAY_TMPDIR, so the cluster it makes is never
found by anybody else's `ray.init()` on this machine. Prints one JSON line: {"removed_node": bool}.
"""

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from curate.config import load_job
from curate.pipeline import run_job


def main() -> None:
    out, job, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    removed = []

    def remove_when_clips_appear():
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "clips").exists() and any((out / "clips").glob("*.mp4")):
                cluster.remove_node(doomed)  # the node's raylet and every worker on it die
                removed.append(True)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=remove_when_clips_appear, daemon=True)
    thread.start()
    run_job(load_job(job, overrides))
    thread.join(timeout=1)
    print(json.dumps({"removed_node": bool(removed)}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
