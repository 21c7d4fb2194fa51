"""Names and places of one simulated cluster: its prefix, state directory, namespaces, addresses.

Everything here is derived from HVSIM_PREFIX and HVSIM_DIR, so two clusters with different
prefixes never share a namespace, a file or a lock.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from preflight.errors import Exit, UserError

PROG = "simcluster"
CLI = "PYTHONPATH=scripts python3 -m simcluster"  # how a person runs it from the checkout
UP_HINT = "run: sudo make cluster-up N=3"
DEFAULT_PREFIX = "hvsim"
SUBNET = "10.231.0"  # host hN is SUBNET.(10+N)/24
SECOND_NET = "10.232"  # eth1 of host hN is SECOND_NET.N.1/24
DATA_NET = "10.233.0"  # with --data-net, eth2 of host hN is DATA_NET.(10+N)/24, on bridge br1
DATA_IFNAME = "eth2"
DATA_BRIDGE = "br1"
DEFAULT_HOSTS = 3
MAX_HOSTS = 128  # addresses SUBNET.11-138; 100 is what make test-scale runs
SSHD = "/usr/sbin/sshd"
# Clusters with different prefixes may run at once; all of them edit the same ~/.ssh/config.
SSH_CONFIG_LOCK = Path("/run/lock/hvsim-ssh-config.lock")
PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
STATE_DIR_RE = re.compile(r"/[A-Za-z0-9._/-]+")
HOST_RE = re.compile(r"h([1-9][0-9]*)")


def host_address(index: int) -> str:
    """h2 -> 10.231.0.12."""
    return f"{SUBNET}.{10 + index}"


def data_address(index: int) -> str:
    """h2 -> 10.233.0.12, its address on the data network (--data-net)."""
    return f"{DATA_NET}.{10 + index}"


def data_port(host: str) -> str:
    """The switch end of a host's data link: h2 -> data-h2."""
    return f"data-{host}"


def host_index(name: str) -> int | None:
    """'h3' -> 3; None for anything that is not a host name."""
    match = HOST_RE.fullmatch(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Settings:
    """Where one cluster lives. The prefix and directory end up in interface, namespace and file
    names, where spaces or odd characters would break things confusingly, so both are checked."""

    prefix: str = DEFAULT_PREFIX
    state_dir: Path = Path("/tmp") / DEFAULT_PREFIX

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        prefix = env.get("HVSIM_PREFIX") or DEFAULT_PREFIX
        # Each prefix gets its own state directory by default, so clusters never share one.
        return cls.make(prefix, env.get("HVSIM_DIR") or f"/tmp/{prefix}")

    @classmethod
    def make(cls, prefix: str, state_dir: str | Path | None = None) -> Settings:
        state = str(state_dir or f"/tmp/{prefix}")
        if not PREFIX_RE.fullmatch(prefix):
            raise UserError(f"HVSIM_PREFIX '{prefix}' is not 1-8 lowercase letters/digits "
                            "starting with a letter", "unset it or use e.g. HVSIM_PREFIX=hvsim2")
        if not STATE_DIR_RE.fullmatch(state) or state == "/":
            raise UserError(f"HVSIM_DIR '{state}' must be an absolute path of letters, digits "
                            "and ._-/", "unset it or use e.g. HVSIM_DIR=/tmp/hvsim2")
        return cls(prefix, Path(state))

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}-sw"

    def host_ns(self, host: str) -> str:
        """h2 -> hvsim-h2."""
        return f"{self.prefix}-{host}"

    def etc_dir(self, host: str) -> Path:
        """`ip netns exec` bind-mounts the files in here over /etc (hosts, for one)."""
        return Path("/etc/netns") / self.host_ns(host)

    def host_dir(self, host: str) -> Path:
        return self.state_dir / host

    @property
    def lock_file(self) -> Path:
        return Path(f"/run/lock/{self.prefix}-cluster.lock")

    @property
    def namespace_re(self) -> re.Pattern[str]:
        """Exactly <prefix>-sw and <prefix>-hN, so a prefix that merely starts with ours
        (hvsim2-h1) is never touched."""
        return re.compile(rf"{re.escape(self.prefix)}-(sw|h[0-9]+)")

    @property
    def hosts_tag(self) -> str:
        """A comment line in every host's /etc/hosts naming the cluster; the ssh client config
        applies only where it is found (see sshd.write_client_config)."""
        return f"# hvsim-cluster: {self.prefix}"

    def uts_name(self, host: str) -> str:
        """The command name of the process that holds a host's hostname."""
        return f"{self.prefix}-uts-{host}"


def bad_host(name: str, hosts: list[str]) -> UserError:
    return UserError(f"unknown host '{name}'", f"hosts are: {' '.join(hosts)}", Exit.BAD_INPUT)
