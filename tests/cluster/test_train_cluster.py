"""End to end on the simulated cluster: preflight from h1 over three hosts, then horovodrun
trains the template across all of them over the interface the preflight chose; also where the
hosts name that interface differently."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_PY = ROOT / ".venv" / "bin" / "python"
TRAIN = (str(VENV_PY), "-m", "preflight.train")  # what make train runs
CLUSTER_SH = ROOT / "scripts" / "cluster.sh"  # runs `python3 -m simcluster`, as a user would

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_preflight_then_training_across_three_hosts(cluster, tmp_path: Path) -> None:
    # The session cluster gives h3 Debian's '127.0.1.1 h3' line; a job across all three hosts
    # needs it gone, as a user would fix it.
    cluster.fault("h3", "debian-hosts", "off")
    try:
        env = {**os.environ, "HOSTS": "h1:1,h2:1,h3:1", "REPORT": str(tmp_path / "pf.json"),
               "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
               "EPOCHS": "15"}
        proc = cluster.exec("h1", *TRAIN, env=env, cwd=str(ROOT), timeout=600)
    finally:
        cluster.fault("h3", "debian-hosts", "on")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((tmp_path / "pf.json").read_text())
    assert report["ok"] and report["np"] == 3
    assert report["interface"] == "eth0"  # not lo, not the docker0 every host has
    assert (tmp_path / "hostfile").read_text().split("\n") == [
        "h1 slots=1", "h2 slots=1", "h3 slots=1", ""]
    assert "--network-interfaces eth0" in proc.stderr

    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 3
    assert sorted(metrics["rank_hosts"]) == ["h1", "h2", "h3"]  # every rank took part
    assert metrics["val_accuracy"] >= 0.95
    assert (run / "model.keras").is_file() and list((run / "checkpoints").glob("epoch-015.keras"))


def test_training_from_csv_files_gives_each_host_its_own_files(cluster, tmp_path: Path) -> None:
    # The in-memory set as 6 CSV training files (and 2 validation files), as a user's would be.
    data = tmp_path / "digits-csv"
    written = subprocess.run([str(VENV_PY), str(ROOT / "template" / "records.py"), str(data),
                              "--files", "6"], capture_output=True, text=True, timeout=120)
    assert written.returncode == 0, written.stderr[-2000:]
    train_files = sorted(str(p) for p in data.glob("train-*.csv"))
    cluster.fault("h3", "debian-hosts", "off")
    try:
        env = {**os.environ, "HOSTS": "h1:1,h2:1,h3:1", "REPORT": str(tmp_path / "pf.json"),
               "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
               "EPOCHS": "15", "DATA": str(data), "BANDWIDTH": "1"}
        proc = cluster.exec("h1", *TRAIN, env=env, cwd=str(ROOT), timeout=600)
    finally:
        cluster.fault("h3", "debian-hosts", "on")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["rank_hosts"]) == ["h1", "h2", "h3"]
    per_rank = metrics["rank_files"]
    assert [len(files) for files in per_rank] == [2, 2, 2]
    every = [f for files in per_rank for f in files]
    assert sorted(every) == train_files  # disjoint, and together the whole set
    assert metrics["val_accuracy"] >= 0.95  # what the in-memory run reaches (test above)
    # What the user saw: one line per epoch, no mpirun tags, no TensorFlow start-up notes.
    assert "1438 records in 6 csv files" in proc.stdout
    assert len([ln for ln in proc.stdout.splitlines() if ln.startswith("epoch ")]) == 15
    assert "<stdout>:" not in proc.stdout and "oneDNN" not in proc.stdout + proc.stderr
    # BANDWIDTH=1: the preflight measured the links, and the run predicted its step time from
    # them (printed first) and measured it beside the prediction.
    assert "prediction on 3 host(s), 3 rank(s):" in proc.stdout
    scaling = metrics["scaling"]
    assert [p["hosts"] for p in scaling["predicted"]] == [1, 2, 3]
    assert scaling["measured"]["hosts"] == 3 and scaling["measured"]["step_ms"] > 0
    assert (run / "prediction.png").read_bytes().startswith(b"\x89PNG")

    # make evaluate: the saved model on the full validation files, in one process.
    evaluated = subprocess.run(["make", "--no-print-directory", "evaluate", f"RUN={run}"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    shown = dict(re.findall(r"(val_\w+) ([\d.]+)", evaluated.stdout))
    assert abs(float(shown["val_accuracy"]) - metrics["val_accuracy"]) < 0.03


@pytest.fixture
def renamed_env(tmp_path: Path):
    """A cluster of its own (prefix hvif) where h2 calls its link ens5 and the others eth0."""
    if os.geteuid() != 0:
        pytest.skip("needs root: simcluster builds network namespaces")
    from simcluster import Cluster, UpOptions  # scripts/ is on sys.path (conftest.py)

    env = {**os.environ, "HVSIM_PREFIX": "hvif", "HVSIM_DIR": str(tmp_path / "state")}
    renamed = Cluster.from_env(env)
    try:
        renamed.up(UpOptions.parse("3", ifname="h2=ens5"))
        yield env
    finally:
        renamed.down()


def test_hosts_that_name_the_interface_differently_still_train_together(renamed_env,
                                                                        tmp_path: Path) -> None:
    env = {**renamed_env, "HOSTS": "h1:1,h2:1,h3:1", "REPORT": str(tmp_path / "pf.json"),
           "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
           "EPOCHS": "3"}
    proc = subprocess.run([str(CLUSTER_SH), "exec", "h1", *TRAIN],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "pf.json").read_text())
    assert (report["interface"], report["interface_cidr"]) == ("eth0,ens5", "10.231.0.0/24")
    # Open MPI gets the subnet: given the names, it hangs on a host that lacks one of them.
    assert "--network-interfaces 10.231.0.0/24" in proc.stderr
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["rank_hosts"]) == ["h1", "h2", "h3"]

    gloo = subprocess.run([str(CLUSTER_SH), "exec", "h1", *TRAIN],
                          env={**env, "ELASTIC": "1", "HOSTFILE": str(tmp_path / "hostfile")},
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert gloo.returncode == 2
    assert "Gloo takes one name for all" in gloo.stderr
