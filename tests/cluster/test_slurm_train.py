"""Training under Slurm (issue 14), end to end on a real Slurm on the simulated cluster (prefix
hvslt, 3 nodes): `make submit` on the login node h1 sbatches template/train.sbatch; inside the
job the preflight takes the allocation as its inventory and make train launches on the nodes
that passed, mpirun starting its daemons through srun. With one node's MPI ports shut (Slurm's
own ports open, so Slurm still schedules it) the preflight drops it, training runs on the other
two, and the job's log names the node, the remedy and the --exclude= for the next submission.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from conftest import skip_unless_cluster_possible

from simcluster import Cluster, UpOptions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    skip_unless_cluster_possible()
    cluster = Cluster("hvslt", tmp_path_factory.mktemp("hvslt") / "state")
    try:
        cluster.up(UpOptions.parse("3", slurm=True))
        yield cluster
    finally:
        cluster.down()


def submit(cluster: Cluster, tmp_path: Path, **variables: str) -> tuple[str, dict]:
    """make submit NODES=3 from h1 with the training variables; waits for the job to end and
    returns its log and the metrics of the run it made."""
    env = {**os.environ, "OUT": str(tmp_path / "runs"), "REPORT": str(tmp_path / "pf.json"),
           "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "NODES": "3", **variables}
    proc = cluster.exec("h1", "make", "--no-print-directory", "submit", env=env, cwd=str(ROOT),
                        timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = re.search(r"job (\d+) submitted; log (\S+)", proc.stdout)
    assert job, proc.stdout
    assert f"squeue -j {job.group(1)}" in proc.stdout
    state = wait_for(cluster, job.group(1))
    log = Path(job.group(2)).read_text()
    assert state == "COMPLETED", f"job {job.group(1)}: {state}\n{log[-4000:]}"
    (metrics,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/metrics.json")]
    return log, metrics


def wait_for(cluster: Cluster, job: str) -> str:
    deadline, state = time.monotonic() + JOB_TIMEOUT_S, ""
    while time.monotonic() < deadline:
        shown = cluster.exec("h1", "scontrol", "--oneliner", "show", "job", job).stdout
        state = next((w.split("=", 1)[1] for w in shown.split() if w.startswith("JobState=")),
                     "")
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", ""):
            return state
        time.sleep(1)
    cluster.exec("h1", "scancel", job)
    return f"still {state} after {JOB_TIMEOUT_S} s (cancelled)"


def test_a_batch_job_preflights_the_allocation_and_trains_on_all_three_nodes(
        slurm_cluster: Cluster, tmp_path: Path) -> None:
    log, metrics = submit(slurm_cluster, tmp_path, EPOCHS="15")
    assert "preflight: inventory: Slurm job" in log and "(h[1-3], 3 nodes)" in log
    assert "all hosts healthy" in log
    assert sorted(metrics["rank_hosts"]) == ["h1", "h2", "h3"]
    assert metrics["val_accuracy"] >= 0.95


def test_a_node_with_mpi_ports_shut_is_dropped_and_named_with_the_exclude_line(
        slurm_cluster: Cluster, tmp_path: Path) -> None:
    with slurm_cluster.fault("h2", "mpi-firewall"):
        state = slurm_cluster.exec("h1", "sinfo", "-h", "-n", "h2", "-o", "%t").stdout.strip()
        assert state == "idle"  # Slurm still schedules h2: only MPI's ports are shut
        log, metrics = submit(slurm_cluster, tmp_path, EPOCHS="15")
    assert "FAIL h2 mesh.tcp" in log and "fix: " in log
    assert "sbatch --exclude=h2" in log and "make submit EXCLUDE=h2" in log
    assert sorted(metrics["rank_hosts"]) == ["h1", "h3"]
    assert metrics["val_accuracy"] >= 0.95
