"""A real Slurm on the simulated cluster (`simcluster up --slurm`): Debian's slurmctld, slurmd and
munged on a cluster of its own (prefix hvslurm, 3 hosts), with client commands run on h1 as on
a login node. Checks that srun and sbatch reach every host, that Open MPI's mpirun inside an
sbatch job starts its daemons through srun, that the mpi-firewall fault leaves Slurm working but
shuts the host's other ports, and that `down` leaves no daemon and no file behind.

Needs root; see conftest.py. The tests run in file order: the last one takes the cluster down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, skip_unless_cluster_possible

from simcluster import Cluster, UpOptions, slurm

pytestmark = pytest.mark.cluster

PREFIX = "hvslurm"
HOSTS = ["h1", "h2", "h3"]
PORT = 45678  # in Linux's ephemeral range, where MPI's and Horovod's listeners land
# Listens on PORT on all addresses, says so, and accepts until killed.
LISTEN = ("import socket, sys\n"
          "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(8); print('ready', flush=True)\n"
          "while True: s.accept()[0].close()\n")
CONNECT = ("import socket, sys\n"
           "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    skip_unless_cluster_possible()
    cluster = Cluster(PREFIX, tmp_path_factory.mktemp("hvslurm") / "state")
    try:
        started = time.monotonic()
        cluster.up(UpOptions.parse("3", slurm=True))
        print(f"up 3 --slurm: {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        cluster.down()  # again after the last test: then it has nothing to remove


def on_login(cluster: Cluster, *argv: str, cwd: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """A command on h1, as a user on the login node types it; fails the test if it fails."""
    proc = cluster.exec("h1", *argv, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stdout}{proc.stderr}"
    return proc


def sbatch(cluster: Cluster, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> str:
    """Submits a job from tmp_path (the working directory every host shares), waits until it
    has COMPLETED (exit 0) and returns its output file's text. Polled here: `sbatch --wait`
    polls with growing sleeps and took 10 s for a 1 s job."""
    cmd = ["sbatch", "--parsable", "--output=job-%j.out", *args]
    prefix = ["env", *[f"{k}={v}" for k, v in env.items()]] if env else []
    job = on_login(cluster, *prefix, *cmd, cwd=tmp_path).stdout.strip().split(";")[0]
    deadline, state = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        shown = on_login(cluster, "scontrol", "--oneliner", "show", "job", job).stdout
        state = next((w.split("=", 1)[1] for w in shown.split() if w.startswith("JobState=")),
                     "")
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", ""):
            break
        time.sleep(0.2)
    output = tmp_path / f"job-{job}.out"
    text = output.read_text() if output.exists() else "(no output file)"
    assert state == "COMPLETED", f"job {job} ({' '.join(cmd)}): {state}\n{text}"
    return text


def connects(cluster: Cluster, src: str, dst: str, port: int) -> bool:
    return cluster.exec(src, sys.executable, "-c", CONNECT, dst, str(port),
                        timeout=30).returncode == 0


def test_every_node_is_idle_and_srun_runs_on_each(sim):
    assert slurm.node_states(sim.settings) == {h: "idle" for h in HOSTS}
    started = time.monotonic()
    out = on_login(sim, "srun", "-N3", "hostname").stdout
    print(f"srun -N3 hostname: {time.monotonic() - started:.2f} s")
    assert sorted(out.split()) == HOSTS
    # Every host sees the cluster's config as /etc/slurm, also in an ssh session.
    assert "idle" in sim.exec("h2", "ssh", "-o", "BatchMode=yes", "h3", "sinfo", "-h",
                              timeout=60).stdout


def test_status_shows_the_daemons_and_the_nodes(sim):
    env = {**os.environ, "HVSIM_PREFIX": PREFIX, "HVSIM_DIR": str(sim.state_dir)}
    proc = cli("status", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "slurm=on slurm-cpus=2" in proc.stdout
    assert "slurm: nodes: h1 idle, h2 idle, h3 idle" in proc.stdout
    assert "slurmctld on h1 up (pid" in proc.stdout and "slurmd up on 3 hosts" in proc.stdout
    login = cli("slurm", "srun", "-N2", "hostname", env=env)
    assert login.returncode == 0 and sorted(login.stdout.split()) == ["h1", "h2"], login.stderr


def test_an_sbatch_job_writes_its_output_in_the_shared_working_directory(sim, tmp_path):
    started = time.monotonic()
    text = sbatch(sim, tmp_path, "-N2", "--wrap", "srun hostname; pwd; echo $SLURM_JOB_NODELIST")
    print(f"sbatch round trip: {time.monotonic() - started:.2f} s")
    lines = text.split()
    assert sorted(lines[:2]) == ["h1", "h2"], text
    assert lines[2:] == [str(tmp_path), "h[1-2]"], text


def test_mpirun_in_an_sbatch_job_starts_its_daemons_through_srun(sim, tmp_path):
    # As root, Open MPI wants these two (or --allow-run-as-root); sbatch passes the submitting
    # environment to the job. plm_base_verbose shows the srun line that starts orted.
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    started = time.monotonic()
    text = sbatch(sim, tmp_path, "-N3", "--ntasks-per-node=1", "--wrap",
                  "mpirun --mca plm_base_verbose 5 -np 3 hostname", env=env)
    print(f"sbatch of mpirun -np 3 hostname: {time.monotonic() - started:.2f} s")
    hosts = [line for line in text.splitlines() if line in HOSTS]
    assert sorted(hosts) == HOSTS, text
    assert any(line.lstrip().startswith("srun ") and " orted " in line
               for line in text.splitlines()), text


def test_mpi_firewall_keeps_slurm_working_and_shuts_the_other_ports(sim):
    listeners = [subprocess.Popen(sim.exec_argv(h, [sys.executable, "-c", LISTEN, str(PORT)]),
                                  stdout=subprocess.PIPE, text=True) for h in ("h2", "h3")]
    try:
        assert all(p.stdout.readline().strip() == "ready" for p in listeners)
        assert connects(sim, "h1", "h2", PORT)  # the check itself works without the fault
        with sim.fault("h2", "mpi-firewall"):
            assert not connects(sim, "h1", "h2", PORT)
            assert connects(sim, "h1", "h3", PORT)
            assert connects(sim, "h1", "h2", slurm.SLURMD_PORT)
            assert slurm.node_states(sim.settings) == {h: "idle" for h in HOSTS}
            out = on_login(sim, "srun", "-N3", "hostname").stdout
            assert sorted(out.split()) == HOSTS
            assert "fault: h2 mpi-firewall on" in sim.status_lines()
        assert connects(sim, "h1", "h2", PORT)
    finally:
        for proc in listeners:
            proc.kill()
            proc.wait()


def our_processes(state_dir: Path) -> list[str]:
    """Command lines of live processes that mention the cluster's state directory."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(state_dir) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_down_stops_every_slurm_daemon_and_removes_its_files(sim):
    daemons = [line for line in our_processes(sim.state_dir)
               if any(name in line for name in ("slurmctld", "slurmd", "munged"))]
    assert len(daemons) == 5, daemons  # the test below would pass vacuously otherwise
    started = time.monotonic()
    removed = sim.down()
    print(f"down: {time.monotonic() - started:.1f} s")
    assert "stopped slurmctld on h1" in " ".join(removed) and len(
        [line for line in removed if line.startswith("stopped slurmd of")]) == 3, removed
    assert our_processes(sim.state_dir) == []
    assert not sim.state_dir.exists()
    assert not list(Path("/etc/netns").glob(f"{PREFIX}-*"))
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{PREFIX}-" not in namespaces
