"""Fixtures for tests that need a simulated multi-host cluster (scripts/cluster.sh).

The session-scoped ``cluster`` fixture builds three hosts h1..h3 in network namespaces, each
with its own sshd, hostname and /etc/hosts, plus some real-world noise: a Docker-like
``docker0`` bridge on every host, a second interface on h2, and Debian's ``127.0.1.1 h3`` line
on h3. The cluster is torn down at the end of the session, also when tests fail or the run is
interrupted.

Needs root (network namespaces); without it every test using the fixture is skipped.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cluster.sh"
UP_ARGS = ("up", "3", "--decoy-bridge", "all", "--second-if", "h2", "--debian-hosts", "h3")
TIMEOUT_S = 180


def run_cluster_sh(*args: str, env: dict[str, str] | None = None, check: bool = False,
                   timeout: float = TIMEOUT_S, **kwargs) -> subprocess.CompletedProcess:
    """Runs scripts/cluster.sh with ``args``, capturing text output unless told otherwise."""
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run([str(SCRIPT), *args], env=env, check=check, timeout=timeout, **kwargs)


def skip_unless_cluster_possible() -> None:
    """Skips the calling test when this machine cannot build the simulated cluster."""
    if os.geteuid() != 0:
        pytest.skip("needs root: scripts/cluster.sh builds network namespaces "
                    "(run: sudo python3 -m pytest tests/cluster)")
    missing = [tool for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "iptables")
               if shutil.which(tool) is None]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("/usr/sbin/sshd")
    if missing:
        pytest.skip(f"scripts/cluster.sh needs {', '.join(missing)} (run: scripts/setup.sh)")


@dataclass
class Cluster:
    """A running simulated cluster; ``exec`` and ``fault`` wrap the matching cluster.sh commands."""

    env: dict[str, str]
    state_dir: Path
    prefix: str = "hvsim"
    script: Path = SCRIPT
    up_args: tuple[str, ...] = UP_ARGS
    hosts: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    interfaces: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_state(cls, env: dict[str, str]) -> Cluster:
        prefix = env.get("HVSIM_PREFIX") or "hvsim"
        state_dir = Path(env.get("HVSIM_DIR") or f"/tmp/{prefix}")  # cluster.sh's defaults
        cluster = cls(env=env, state_dir=state_dir, prefix=prefix)
        # <state>/hosts has one 'NAME ADDRESS IFNAME' line per host.
        for line in (state_dir / "hosts").read_text().splitlines():
            name, address, ifname = line.split()
            cluster.hosts.append(name)
            cluster.addresses[name] = address
            cluster.interfaces[name] = ifname
        return cluster

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Runs ``cluster.sh ARGS`` against this cluster. An ``env`` given here is the command's
        environment; the cluster's HVSIM_* variables are added to it so it finds this cluster."""
        env = dict(kwargs.pop("env", None) or self.env)
        env.update({k: v for k, v in self.env.items() if k.startswith("HVSIM_")})
        return run_cluster_sh(*args, env=env, **kwargs)

    def exec(self, host: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        """Runs argv on ``host`` (its network namespace, /etc/hosts and hostname)."""
        kwargs.setdefault("timeout", 60)
        return self.run("exec", host, *argv, **kwargs)

    def fault(self, host: str, kind: str, state: str, value: str | int | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
        """Turns a fault on or off; raises CalledProcessError on failure unless check=False."""
        args = ["fault", host, kind, state] + ([] if value is None else [str(value)])
        proc = self.run(*args)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout,
                                                proc.stderr)
        return proc

    def ssh(self, src: str, dst: str, *command: str, **kwargs) -> subprocess.CompletedProcess:
        """ssh from ``src`` to ``dst`` in batch mode (never prompts), as mpirun does."""
        return self.exec(src, "ssh", "-o", "BatchMode=yes", dst, *command, **kwargs)


@pytest.fixture(scope="session")
def cluster():
    skip_unless_cluster_possible()
    env = dict(os.environ)
    done = False

    def down() -> None:
        nonlocal done
        if done:
            return
        done = True
        proc = run_cluster_sh("down", env=env)
        if proc.returncode != 0:
            print(f"cluster.sh down failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")

    # The finally below covers failures and Ctrl-C; atexit covers a session that dies without
    # running fixture teardown.
    atexit.register(down)
    try:
        proc = run_cluster_sh(*UP_ARGS, env=env)
        if proc.returncode != 0:
            pytest.fail(f"cluster.sh {' '.join(UP_ARGS)} failed ({proc.returncode}):\n"
                        f"{proc.stdout}{proc.stderr}", pytrace=False)
        yield Cluster.from_state(env)
    finally:
        down()
