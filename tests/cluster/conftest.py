"""Fixtures for tests that need a simulated multi-host cluster (scripts/simcluster).

The session-scoped ``cluster`` fixture builds three hosts h1..h3 in network namespaces, each
with its own sshd, hostname and /etc/hosts, plus some real-world noise: a Docker-like
``docker0`` bridge on every host, a second interface on h2, and Debian's ``127.0.1.1 h3`` line
on h3. The cluster is torn down at the end of the session, also when tests fail or the run is
interrupted. It is the package's own ``simcluster.Cluster`` (built in this process, no script in
between), with a few conveniences for tests.

Needs root (network namespaces); without it every test using the fixture is skipped.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
if str(SCRIPTS) not in sys.path:  # the venv's editable install has it; a bare checkout may not
    sys.path.insert(0, str(SCRIPTS))

from preflight.errors import UserError  # noqa: E402
from simcluster import Cluster, Settings, UpOptions  # noqa: E402

# The command line as a person or a job script runs it (scripts/cluster.sh runs the same module).
SCRIPT = SCRIPTS / "cluster.sh"
UP_ARGS = ("up", "3", "--decoy-bridge", "all", "--second-if", "h2", "--debian-hosts", "h3")
UP_OPTIONS = UpOptions.parse("3", decoy_bridge="all", second_if="h2", debian_hosts="h3")
TIMEOUT_S = 180
# A TCP transfer between two simulated hosts (transfer_s): the receiver prints its port, then
# the bytes and the seconds from the first byte to the last (connecting is not part of it).
RECEIVE = """\
import socket, sys, time
s = socket.socket(); s.settimeout(30); s.bind((sys.argv[1], 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.settimeout(30); n = 0; first = None
while b := c.recv(1 << 20):
    first = first or time.monotonic(); n += len(b)
print(n, time.monotonic() - first, flush=True)
"""
SEND = """\
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(bytes(int(sys.argv[3]))); c.shutdown(socket.SHUT_WR); c.recv(1)
"""


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S,
        **kwargs) -> subprocess.CompletedProcess:
    """Runs `python3 -m simcluster ARGS` (PYTHONPATH=scripts), capturing text output unless
    told otherwise."""
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(SCRIPTS)}
    return subprocess.run([sys.executable, "-m", "simcluster", *args], env=env,
                          timeout=timeout, **kwargs)


def transfer_s(cluster: Cluster, src: str, dst: str, address: str, nbytes: int,
               timeout: float = 30) -> float:
    """Seconds `dst` took to receive nbytes sent over TCP from `src` to `address` (one of
    dst's addresses)."""
    receiver = subprocess.Popen(cluster.exec_argv(dst, [sys.executable, "-c", RECEIVE, address]),
                                stdout=subprocess.PIPE, text=True)
    try:
        port = receiver.stdout.readline().strip()
        assert port.isdigit(), f"receiver on {dst} did not start"
        sent = cluster.exec(src, sys.executable, "-c", SEND, address, port, str(nbytes),
                            timeout=timeout)
        assert sent.returncode == 0, sent.stderr
        got, seconds = receiver.stdout.readline().split()
        assert int(got) == nbytes
        return float(seconds)
    finally:
        receiver.kill()
        receiver.wait()


def skip_unless_cluster_possible() -> None:
    """Skips the calling test when this machine cannot build the simulated cluster."""
    if os.geteuid() != 0:
        pytest.skip("needs root: simcluster builds network namespaces "
                    "(run: sudo python3 -m pytest tests/cluster)")
    missing = [tool for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "iptables")
               if shutil.which(tool) is None]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("/usr/sbin/sshd")
    if missing:
        pytest.skip(f"simcluster needs {', '.join(missing)} (run: scripts/setup.sh)")


class SessionCluster(Cluster):
    """simcluster.Cluster plus what tests want: the environment that names the cluster (for
    commands that find it themselves), the command line against it, ssh between hosts, and a
    60 s default timeout on `exec`."""

    script = SCRIPT
    up_args = UP_ARGS

    def __init__(self, env: dict[str, str]) -> None:
        settings = Settings.from_env(env)
        super().__init__(settings.prefix, settings.state_dir)
        self.env = env

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Runs the command line with ``args`` against this cluster. An ``env`` given here is
        the command's environment; the cluster's HVSIM_* variables are added to it."""
        env = dict(kwargs.pop("env", None) or self.env)
        env.update({k: v for k, v in self.env.items() if k.startswith("HVSIM_")})
        return cli(*args, env=env, **kwargs)

    def exec(self, host: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("timeout", 60)
        return super().exec(host, *argv, **kwargs)

    def ssh(self, src: str, dst: str, *command: str, **kwargs) -> subprocess.CompletedProcess:
        """ssh from ``src`` to ``dst`` in batch mode (never prompts), as mpirun does."""
        return self.exec(src, "ssh", "-o", "BatchMode=yes", dst, *command, **kwargs)


@pytest.fixture(scope="session")
def cluster():
    skip_unless_cluster_possible()
    session = SessionCluster(dict(os.environ))
    done = False

    def down() -> None:
        nonlocal done
        if done:
            return
        done = True
        try:
            session.down()
        except (UserError, OSError) as error:
            print(f"simcluster down failed: {error}")

    # The finally below covers failures and Ctrl-C; atexit covers a session that dies without
    # running fixture teardown.
    atexit.register(down)
    try:
        try:
            session.up(UP_OPTIONS)
        except UserError as error:
            pytest.fail(f"simcluster {' '.join(UP_ARGS)} failed: {error}", pytrace=False)
        yield session
    finally:
        down()
