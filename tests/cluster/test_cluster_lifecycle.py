"""`simcluster up` then `down` leaves the machine exactly as it found it.

These tests build their own clusters under a separate namespace prefix (HVSIM_PREFIX=hvlc) and
state directory, so they never collide with the session cluster of test_cluster.py (prefix hvsim),
whether or not that one is up, and they bring down nothing but their own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simcluster import Cluster

pytestmark = pytest.mark.cluster

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
CLI = (sys.executable, "-m", "simcluster")  # with PYTHONPATH=scripts, as the Makefile runs it
PREFIX = "hvlc"
OUR_NS = re.compile(rf"^{PREFIX}-(sw|h\d+)$")


@pytest.fixture
def lc_env(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: simcluster builds network namespaces "
                    "(run: sudo python3 -m pytest tests/cluster)")
    env = {**os.environ, "HVSIM_PREFIX": PREFIX, "HVSIM_DIR": str(tmp_path / "state"),
           "PYTHONPATH": str(SCRIPTS)}
    yield env
    # Whatever the test did, leave none of its cluster behind.
    Cluster.from_env(env, log=lambda line: None).down()


def cli(env, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The command line, as a user runs it."""
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def root_links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout


SESSION_PREFIX = os.environ.get("HVSIM_PREFIX") or "hvsim"
SESSION_NS = re.compile(rf"^{SESSION_PREFIX}-(sw|h\d+)$")
SESSION_DIR = os.environ.get("HVSIM_DIR") or f"/tmp/{SESSION_PREFIX}"
BLOCK = re.compile(r"^# >>> (\S+) cluster \(scripts/cluster.sh\) >>>\n.*?^# <<< \1 cluster <<<\n",
                   re.M | re.S)


def processes(*needles: str) -> set[str]:
    """Live processes whose command line contains one of ``needles``."""
    out = subprocess.run(["ps", "-eww", "-o", "pid=,stat=,args="], capture_output=True,
                         text=True).stdout
    procs = set()
    for line in out.splitlines():
        pid, stat, args = line.split(None, 2)
        if stat.startswith("Z"):
            continue  # exited, waiting for init to reap it
        if any(needle in args for needle in needles):
            procs.add(f"{pid} {args}")
    return procs


def ssh_config() -> str | None:
    path = Path.home() / ".ssh" / "config"
    return path.read_text() if path.exists() else None


def snapshot(env) -> dict:
    """What this module's clusters could change. Other sessions may build clusters under other
    prefixes at the same time, so their namespaces, sshds and ~/.ssh/config blocks are left out;
    the session cluster (prefix hvsim by default), if up, must survive untouched."""
    config = ssh_config()
    return {
        "our namespaces": [ns for ns in namespaces() if OUR_NS.match(ns)],
        "session cluster namespaces": [ns for ns in namespaces() if SESSION_NS.match(ns)],
        "root links": root_links(),
        "our processes": processes(env["HVSIM_DIR"], f"{PREFIX}-uts-"),
        "session cluster processes": processes(f"{SESSION_DIR}/"),
        "our ~/.ssh/config block": f"# >>> {PREFIX} cluster" in (config or ""),
        "~/.ssh/config outside cluster blocks": BLOCK.sub("", config or ""),
        "/etc/netns": sorted(p.name for p in Path("/etc/netns").glob(f"{PREFIX}-*")),
    }


def assert_same(before: dict, after: dict) -> None:
    for key in before:
        assert after[key] == before[key], (f"{key} changed: before {before[key]!r} "
                                           f"after {after[key]!r}")


def test_up_8_then_down_leaves_the_machine_as_before(lc_env):
    before = snapshot(lc_env)
    assert before["our namespaces"] == [] and before["/etc/netns"] == []
    assert before["our processes"] == set() and not before["our ~/.ssh/config block"]
    up = cli(lc_env, "up", "8", "--ifname", "h2=ens5", "--mtu", "h3=9000",
                    "--decoy-bridge", "h1,h8", "--second-if", "all")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert [ns for ns in namespaces() if OUR_NS.match(ns)] == sorted(
            [f"{PREFIX}-sw"] + [f"{PREFIX}-h{i}" for i in range(1, 9)])
        state = Path(lc_env["HVSIM_DIR"])
        assert any(f"{state}/h8/sshd_config" in p for p in processes(str(state)))
        ssh = cli(lc_env, "exec", "h1", "ssh", "-o", "BatchMode=yes", "h8", "hostname")
        assert ssh.returncode == 0 and ssh.stdout.strip() == "h8", ssh.stderr
        ens5 = cli(lc_env, "exec", "h2", "ip", "-br", "addr", "show", "ens5").stdout
        assert "10.231.0.12/24" in ens5
        assert "mtu 9000" in cli(lc_env, "exec", "h3", "ip", "link", "show", "eth0").stdout
        assert f"# >>> {PREFIX} cluster (scripts/cluster.sh) >>>" in (ssh_config() or "")
        assert root_links() == before["root links"]
    finally:
        down = cli(lc_env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert_same(before, snapshot(lc_env))
    assert not Path(lc_env["HVSIM_DIR"]).exists()


def test_down_cleans_up_after_a_crash_halfway(lc_env):
    before = snapshot(lc_env)
    up = cli(lc_env, "up", "3")
    assert up.returncode == 0, up.stdout + up.stderr
    state = Path(lc_env["HVSIM_DIR"])
    # Leave the mess a crash would: an sshd killed, the switch gone, state files half there,
    # and a stray process still running inside a host's namespace.
    os.kill(int((state / "h2" / "sshd.pid").read_text()), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", f"{PREFIX}-sw"], check=True)
    (state / "state.json").unlink()
    stray = subprocess.Popen(["ip", "netns", "exec", f"{PREFIX}-h3", "sleep", "300"],
                             start_new_session=True)
    try:
        assert cli(lc_env, "status").returncode == 1  # not a usable cluster any more
        down = cli(lc_env, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert stray.wait(timeout=10) != 0  # killed by down
    finally:
        if stray.poll() is None:
            stray.kill()
    assert_same(before, snapshot(lc_env))
    assert not state.exists()


def test_interrupted_up_removes_what_it_built(lc_env):
    before = snapshot(lc_env)
    proc = subprocess.Popen([*CLI, "up", "6"], env=lc_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Wait until building has started, then interrupt it.
    assert "building" in proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "removing what was built" in err
    assert_same(before, snapshot(lc_env))


def test_two_clusters_side_by_side_each_keep_their_own_ssh_and_go_down_in_either_order(lc_env):
    other = {**lc_env, "HVSIM_PREFIX": f"{PREFIX}b", "HVSIM_DIR": lc_env["HVSIM_DIR"] + "-b"}
    before = snapshot(lc_env)
    try:
        for env in (lc_env, other):
            up = cli(env, "up", "2")
            assert up.returncode == 0, up.stdout + up.stderr
        config = ssh_config() or ""
        assert config.index(f"# >>> {PREFIX}b cluster") < config.index(f"# >>> {PREFIX} cluster")
        # Same host names in both, different keys: plain `ssh h2` (through ~/.ssh/config) must
        # pick each cluster's own key and known_hosts, whichever block comes first.
        for env in (lc_env, other):
            ssh = cli(env, "exec", "h1", "ssh", "-o", "BatchMode=yes", "h2", "hostname")
            assert ssh.returncode == 0 and ssh.stdout.strip() == "h2", ssh.stderr
        # The cluster that came up first (and may have created ~/.ssh/config) goes down first.
        assert cli(lc_env, "down").returncode == 0
        ssh = cli(other, "exec", "h1", "ssh", "-o", "BatchMode=yes", "h2", "hostname")
        assert ssh.returncode == 0 and ssh.stdout.strip() == "h2", ssh.stderr
    finally:
        down = cli(other, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"# >>> {PREFIX}b cluster" not in (ssh_config() or "")
    assert not [ns for ns in namespaces() if re.match(rf"^{PREFIX}b-", ns)]
    assert_same(before, snapshot(lc_env))


def test_up_refuses_a_state_directory_that_is_not_its_own(lc_env):
    state = Path(lc_env["HVSIM_DIR"])
    state.mkdir()
    (state / "precious.txt").write_text("not cluster state\n")
    up = cli(lc_env, "up", "2")
    assert up.returncode == 1
    assert "is not this cluster's (hvlc) state" in up.stderr
    assert (state / "precious.txt").read_text() == "not cluster state\n"
    assert not [ns for ns in namespaces() if OUR_NS.match(ns)]


def test_down_with_nothing_there_says_so(lc_env):
    proc = cli(lc_env, "down")
    assert proc.returncode == 0
    assert "nothing to remove" in proc.stdout
    assert cli(lc_env, "status").returncode == 1
    assert cli(lc_env, "hosts").returncode == 1
