"""What `up` builds: the host count and the realism options, checked before anything is touched."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from preflight.errors import UserError

from .settings import CLI, DATA_IFNAME, DEFAULT_HOSTS, MAX_HOSTS, host_index

DEFAULT_SLURM_CPUS = 2  # this machine's 2 cores; slurm.conf may say more (config_overrides)
MAX_SLURM_CPUS = 256

IFNAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,14}")
# Names the simulation itself uses inside a host.
TAKEN_IFNAMES = ("lo", "docker0", "eth1", "eth1-peer", "vethdk0a", "vethdk0b", DATA_IFNAME)


@dataclass(frozen=True)
class UpOptions:
    """A cluster as asked for; `describe()` is compared with the built one to make `up`
    idempotent. Host lists are in host order; mtu and ifname map a host to its value."""

    hosts: int = DEFAULT_HOSTS
    decoy_bridge: tuple[str, ...] = ()
    second_if: tuple[str, ...] = ()
    debian_hosts: tuple[str, ...] = ()
    mtu: dict[str, int] = field(default_factory=dict)
    ifname: dict[str, str] = field(default_factory=dict)
    # A real Slurm beside sshd (see slurm.py): slurm_cpus is each node's CPUs in slurm.conf.
    slurm: bool = False
    slurm_cpus: int = DEFAULT_SLURM_CPUS
    # Hosts with a second NIC eth2 on a data network of its own switch (net.make_data_if).
    data_net: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [f"h{i}" for i in range(1, self.hosts + 1)]

    def ifname_of(self, host: str) -> str:
        return self.ifname.get(host, "eth0")

    def describe(self, prefix: str) -> str:
        """The one-line description `status` prints (the same text as ever)."""
        mtu = ",".join(f"{h}={self.mtu[h]}" for h in self.names if h in self.mtu)
        ifn = ",".join(f"{h}={self.ifname[h]}" for h in self.names if h in self.ifname)
        return (f"prefix={prefix} hosts={self.hosts} decoy-bridge={','.join(self.decoy_bridge)} "
                f"second-if={','.join(self.second_if)} "
                f"debian-hosts={','.join(self.debian_hosts)} mtu={mtu} ifname={ifn}"
                + (f" slurm=on slurm-cpus={self.slurm_cpus}" if self.slurm else "")
                # Only when asked for, so a cluster built without it describes itself as before.
                + (f" data-net={','.join(self.data_net)}" if self.data_net else ""))

    def to_json(self) -> dict:
        return {"hosts": self.hosts, "decoy_bridge": list(self.decoy_bridge),
                "second_if": list(self.second_if), "debian_hosts": list(self.debian_hosts),
                "mtu": dict(self.mtu), "ifname": dict(self.ifname), "slurm": self.slurm,
                "slurm_cpus": self.slurm_cpus, "data_net": list(self.data_net)}

    @classmethod
    def from_json(cls, doc: dict) -> UpOptions:
        return cls(doc["hosts"], tuple(doc["decoy_bridge"]), tuple(doc["second_if"]),
                   tuple(doc["debian_hosts"]), dict(doc["mtu"]), dict(doc["ifname"]),
                   # A state file written before --slurm (or --data-net) existed lacks the key.
                   bool(doc.get("slurm", False)), int(doc.get("slurm_cpus", DEFAULT_SLURM_CPUS)),
                   tuple(doc.get("data_net", ())))

    @classmethod
    def parse(cls, count: str | None = None, decoy_bridge: str = "", second_if: str = "",
              debian_hosts: str = "", mtu: str = "", ifname: str = "", slurm: bool = False,
              slurm_cpus: str | int | None = None, data_net: str = "") -> UpOptions:
        """The options as typed on the command line ('all', 'h1,h3', 'h1=9000,h2=1400').
        slurm_cpus given means slurm."""
        n = parse_count(count)
        cpus = DEFAULT_SLURM_CPUS if slurm_cpus in (None, "") else check_slurm_cpus(slurm_cpus)
        return cls(n, host_list(decoy_bridge, n, "--decoy-bridge"),
                   host_list(second_if, n, "--second-if"),
                   host_list(debian_hosts, n, "--debian-hosts"),
                   {h: check_mtu(v) for h, v in host_map(mtu, n, "--mtu", "MTU").items()},
                   {h: check_ifname(v) for h, v in host_map(ifname, n, "--ifname", "NAME").items()},
                   slurm or slurm_cpus not in (None, ""), cpus,
                   host_list(data_net, n, "--data-net"))


def parse_count(count: str | None) -> int:
    if count is None:
        return DEFAULT_HOSTS
    if not (count.isascii() and count.isdigit() and 1 <= int(count) <= MAX_HOSTS):
        raise UserError(f"host count '{count}' is not a whole number from 1 to {MAX_HOSTS}",
                        f"run e.g.: {CLI} up 3")
    return int(count)


def _items(spec: str) -> list[str]:
    """'h1,h3' -> ['h1', 'h3']; a trailing comma is forgiven, an empty item is not."""
    items = spec.split(",")
    return items[:-1] if len(items) > 1 and items[-1] == "" else items


def host_list(spec: str, n: int, opt: str) -> tuple[str, ...]:
    """'all' or 'h1,h3' -> the host names, checked against n, in host order."""
    if not spec:
        return ()
    if spec == "all":
        return tuple(f"h{i}" for i in range(1, n + 1))
    wanted = set()
    for item in _items(spec):
        index = host_index(item)
        if index is None or index > n:
            raise UserError(f"{opt}: unknown host '{item}'", f"hosts are h1..h{n} (or 'all')")
        wanted.add(index)
    return tuple(f"h{i}" for i in sorted(wanted))


def host_map(spec: str, n: int, opt: str, what: str) -> dict[str, str]:
    """'h1=9000,h2=1400' -> {'h1': '9000', 'h2': '1400'}, hosts checked against n."""
    if not spec:
        return {}
    found = {}
    for item in _items(spec):
        if "=" not in item:
            raise UserError(f"{opt}: '{item}' is not HOST={what}", f"e.g. {opt} h1={what}")
        host, value = item.split("=", 1)
        index = host_index(host)
        if index is None or index > n:
            raise UserError(f"{opt}: unknown host '{host}'", f"hosts are h1..h{n}")
        valid = value.isascii() and value.isdigit() if what == "MTU" else IFNAME_RE.fullmatch(value)
        if not valid:
            raise UserError(f"{opt}: '{value}' is not a valid {what} for {host}",
                            f"e.g. {opt} {host}={'9000' if what == 'MTU' else 'ens5'}")
        found[f"h{index}"] = value
    return found


def check_mtu(value: str | int) -> int:
    """68 is IPv4's minimum; veth allows up to 65535."""
    text = str(value)
    if not (text.isascii() and text.isdigit() and 68 <= int(text) <= 65535):
        raise UserError(f"MTU '{value}' is not a number from 68 to 65535", "e.g. 1400 or 9000")
    return int(text)


def check_ifname(value: str) -> str:
    if value in TAKEN_IFNAMES:
        raise UserError(f"--ifname: '{value}' is taken by the simulation",
                        "pick another name such as ens5")
    return value


def check_slurm_cpus(value: str | int) -> int:
    text = str(value)
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_SLURM_CPUS):
        raise UserError(f"--slurm-cpus '{value}' is not a whole number from 1 to "
                        f"{MAX_SLURM_CPUS}", "e.g. --slurm-cpus 2")
    return int(text)
