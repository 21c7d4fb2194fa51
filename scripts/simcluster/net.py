"""The network: a switch namespace with bridge br0, one namespace per host wired to it by a veth
pair, the decoy interfaces, the data network (--data-net: bridge br1 in the same switch
namespace, a second veth per host) and each host's /etc/hosts.

Every link is created inside a namespace (`ip -n`, and `peer ... netns`), so no link ever
appears in the root namespace, not even for a moment, and deleting the namespaces removes them
all: nothing is ever added to the root namespace, no address, no route, no link.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .settings import (
    DATA_BRIDGE,
    DATA_IFNAME,
    SECOND_NET,
    Settings,
    data_address,
    data_port,
    host_address,
)
from .system import run, stop_pids


def make_switch(settings: Settings) -> None:
    ns = settings.switch_ns
    run("ip", "netns", "add", ns)
    run("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", ns, "link", "set", "br0", "up")


def make_host_net(settings: Settings, index: int, ifname: str, mtu: int | None) -> None:
    """Host hN: its namespace and a veth pair whose host end (eth0 or --ifname) carries the
    address and whose other end is a port of br0."""
    host, sw = f"h{index}", settings.switch_ns
    ns = settings.host_ns(host)
    run("ip", "netns", "add", ns)
    run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", sw, "link", "add", f"port-{host}", "type", "veth",
        "peer", "name", ifname, "netns", ns)
    run("ip", "-n", sw, "link", "set", f"port-{host}", "master", "br0", "up")
    run("ip", "-n", ns, "addr", "add", f"{host_address(index)}/24", "dev", ifname)
    # Only the host end changes MTU, so a lower value is a real path MTU mismatch: bigger frames
    # from the other hosts are dropped silently on arrival, as on a misconfigured network.
    if mtu:
        run("ip", "-n", ns, "link", "set", ifname, "mtu", str(mtu))
    run("ip", "-n", ns, "link", "set", ifname, "up")


def make_decoy_bridge(settings: Settings, host: str) -> None:
    """Docker's bridge: the same 172.17.0.1/16 on every host, so interface detection that picks
    "the interface all hosts share" picks the wrong one. A bridge without ports has no carrier,
    so it gets a veth whose peer stays in the namespace, as a running container would give it."""
    ns = settings.host_ns(host)
    for argv in (("link", "add", "docker0", "type", "bridge"),
                 ("addr", "add", "172.17.0.1/16", "dev", "docker0"),
                 ("link", "add", "vethdk0a", "type", "veth", "peer", "name", "vethdk0b"),
                 ("link", "set", "vethdk0a", "master", "docker0"),
                 ("link", "set", "vethdk0a", "up"),
                 ("link", "set", "vethdk0b", "up"),
                 ("link", "set", "docker0", "up")):
        run("ip", "-n", ns, *argv)


def make_second_if(settings: Settings, index: int) -> None:
    """A second NIC with a private address unique to the host and nothing behind it."""
    ns = settings.host_ns(f"h{index}")
    run("ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1-peer")
    run("ip", "-n", ns, "addr", "add", f"{SECOND_NET}.{index}.1/24", "dev", "eth1")
    run("ip", "-n", ns, "link", "set", "eth1-peer", "up")
    run("ip", "-n", ns, "link", "set", "eth1", "up")


def make_data_switch(settings: Settings) -> None:
    """The data network's own switch: a second bridge, so its faults (data-dead, data-rate)
    never touch the cluster network on br0."""
    ns = settings.switch_ns
    run("ip", "-n", ns, "link", "add", DATA_BRIDGE, "type", "bridge")
    run("ip", "-n", ns, "link", "set", DATA_BRIDGE, "up")


def make_data_if(settings: Settings, index: int) -> None:
    """Host hN's second NIC eth2 on the data network, wired to br1 through port data-hN. It has
    no name in /etc/hosts, as on real clusters: only its address reaches it."""
    host, sw = f"h{index}", settings.switch_ns
    ns = settings.host_ns(host)
    run("ip", "-n", sw, "link", "add", data_port(host), "type", "veth",
        "peer", "name", DATA_IFNAME, "netns", ns)
    run("ip", "-n", sw, "link", "set", data_port(host), "master", DATA_BRIDGE, "up")
    run("ip", "-n", ns, "addr", "add", f"{data_address(index)}/24", "dev", DATA_IFNAME)
    run("ip", "-n", ns, "link", "set", DATA_IFNAME, "up")


def write_hosts_file(settings: Settings, index: int, n: int, debian: bool) -> None:
    """`ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts, so each host resolves
    the others by name without the machine's /etc/hosts ever changing."""
    lines = [settings.hosts_tag, "127.0.0.1\tlocalhost"]
    if debian:
        lines.append(f"127.0.1.1\th{index}")
    lines += [f"{host_address(j)}\th{j}" for j in range(1, n + 1)]
    lines.append("::1\tlocalhost ip6-localhost ip6-loopback")
    path = settings.etc_dir(f"h{index}") / "hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)


def set_debian_line(path: Path, host: str, on: bool) -> None:
    """Adds (or removes) Debian's '127.0.1.1 HOST' line right after '127.0.0.1 localhost'."""
    out = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields[:1] == ["127.0.1.1"]:
            continue
        out.append(line)
        if on and fields[:2] == ["127.0.0.1", "localhost"]:
            out.append(f"127.0.1.1\t{host}")
    write_in_place(path, out)


def write_in_place(path: Path, lines: list[str]) -> None:
    """Rewrites a hosts file keeping its inode: sshd and its sessions see /etc/hosts through a
    bind mount of this very file, which a rename would leave pointing at the old content."""
    with open(path, "w") as handle:  # truncates the same inode
        handle.write("\n".join(lines) + "\n")


def set_host_lines(path: Path, addresses: dict[str, str | None]) -> None:
    """Rewrites the lines of the cluster's hosts ('ADDRESS<tab>hN') as `addresses` says, in its
    order: a host mapped to None gets no line. Every other line (the tag, localhost, Debian's
    127.0.1.1 line, ::1) stays where it is; the host lines go where the first one was."""
    lines = path.read_text().splitlines()

    def is_host_line(line: str) -> bool:
        fields = line.split()
        return len(fields) == 2 and fields[1] in addresses and not fields[0].startswith("127.")

    first = next((i for i, line in enumerate(lines) if is_host_line(line)), None)
    if first is None:
        first = next((i for i, line in enumerate(lines) if line.startswith("::1")), len(lines))
    kept = [line for line in lines[:first] if not is_host_line(line)]
    rest = [line for line in lines[first:] if not is_host_line(line)]
    wanted = [f"{address}\t{name}" for name, address in addresses.items() if address]
    write_in_place(path, kept + wanted + rest)


# --- finding and removing ---------------------------------------------------------------------

def ns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def our_namespaces(settings: Settings) -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if settings.namespace_re.fullmatch(n)]


def our_etc_dirs(settings: Settings) -> list[Path]:
    found = Path("/etc/netns").glob(f"{settings.prefix}-*")
    return sorted(p for p in found if p.is_dir() and settings.namespace_re.fullmatch(p.name))


def kill_namespace_procs(namespaces: list[str]) -> None:
    """Everything left in the namespaces (ssh sessions, orted, test listeners). A namespace is
    only really gone when no process is left in it, hence the kill before the delete."""
    pids = []
    for ns in namespaces:
        out = run("ip", "netns", "pids", ns, check=False).stdout
        pids += [int(p) for p in out.split() if p.isdigit()]
    stop_pids(pids)


def delete_namespaces(namespaces: list[str]) -> list[str]:
    kill_namespace_procs(namespaces)
    return [f"deleted namespace {ns}" for ns in namespaces
            if run("ip", "netns", "del", ns, check=False).returncode == 0]


def remove_etc_dirs(settings: Settings) -> list[str]:
    removed = []
    for path in our_etc_dirs(settings):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"removed {path}")
    return removed


# The kernel's ARP table is one for all namespaces, and its default hard limit (gc_thresh3,
# 1024 entries) overflows at about 32 hosts that all talk to each other: it then drops
# packets ("neighbor table overflow" in dmesg), which reads as a flaky network.
NEIGH = Path("/proc/sys/net/ipv4/neigh/default")
NEIGH_KEYS = ("gc_thresh1", "gc_thresh2", "gc_thresh3")
NEIGH_SAVED = "neighbour-limits"  # in the state directory: the values found before ours


def neighbour_limits(hosts: int) -> tuple[int, int, int]:
    """Enough ARP entries for every host to know every other on two networks, with room."""
    entries = 2 * hosts * hosts + 1024
    return entries // 4, entries // 2, entries


def raise_neighbour_table(settings: Settings, hosts: int) -> None:
    """Raises the machine's ARP table limits to what `hosts` hosts need (never lowers them),
    keeping the values found in the state directory for restore_neighbour_table."""
    found = [int((NEIGH / key).read_text()) for key in NEIGH_KEYS]
    wanted = [max(f, w) for f, w in zip(found, neighbour_limits(hosts))]
    if wanted == found:
        return
    (settings.state_dir / NEIGH_SAVED).write_text(
        " ".join(map(str, found)) + "\n" + " ".join(map(str, wanted)) + "\n")
    for key, value in zip(NEIGH_KEYS, wanted):
        (NEIGH / key).write_text(str(value))


def restore_neighbour_table(settings: Settings) -> list[str]:
    """Puts back the limits raise_neighbour_table found, unless someone changed them since."""
    saved = settings.state_dir / NEIGH_SAVED
    try:
        found, ours = (line.split() for line in saved.read_text().splitlines()[:2])
    except (OSError, ValueError):
        return []
    if [(NEIGH / key).read_text().strip() for key in NEIGH_KEYS] != ours:
        return []
    for key, value in zip(NEIGH_KEYS, found):
        (NEIGH / key).write_text(value)
    return [f"restored the ARP table limits ({NEIGH}/gc_thresh1-3: {' '.join(found)})"]
