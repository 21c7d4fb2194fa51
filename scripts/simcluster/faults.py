"""Faults a host can be given and taken again: each one is idempotent, and 'off' also undoes
what `up` did in its place (the MTU goes back to 1500, Debian's hosts line goes)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from preflight.errors import Exit, UserError

from .net import set_debian_line
from .options import check_mtu
from .settings import UP_HINT, Settings
from .sshd import sshd_pid, start_sshd, stop_sshd
from .state import Host
from .system import ok, run, tool

FAULT_KINDS = ("link", "loss", "delay", "sshd", "firewall", "mtu", "debian-hosts")
DEFAULT_VALUES = {"loss": "30", "delay": "100", "mtu": "1400"}
# Loopback is spared, as host firewalls (ufw, firewalld) do; only other hosts are blocked.
FIREWALL_RULE = ("INPUT", "!", "-i", "lo", "-p", "tcp", "--syn", "--dport", "1024:65535",
                 "-m", "comment", "--comment", "hvsim-firewall", "-j", "DROP")
NO_NETEM = ("unknown", "No such file", "not supported")


def check_request(kind: str, state: str) -> None:
    if kind not in FAULT_KINDS:
        raise UserError(f"unknown fault kind '{kind}'", f"kinds are: {' '.join(FAULT_KINDS)}")
    if state not in ("on", "off"):
        raise UserError(f"fault state must be 'on' or 'off', not '{state}'",
                        "e.g.: fault h2 firewall on")


def check_value(kind: str, state: str, value: str | None) -> str:
    """The value to use (the kind's default when none is given), checked before any change."""
    value = value if value else DEFAULT_VALUES.get(kind, "")
    if kind == "loss" and not (re.fullmatch(r"[0-9]+(\.[0-9]+)?", value)
                               and 0 < float(value) <= 100):
        raise UserError(f"loss percent '{value}' is not a number in (0, 100]", "e.g. 30")
    if kind == "delay" and not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise UserError(f"delay '{value}' is not a whole number of milliseconds >= 1",
                        "e.g. 100")
    if kind == "mtu" and state == "on":
        check_mtu(value)
    return value


def apply(settings: Settings, host: Host, kind: str, on: bool, value: str) -> None:
    FAULTS[kind](settings, host, on, value)


def _in_ns(host: Host, *argv: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", host.namespace, *argv)


def delete_tagged_rules(host: Host, tag: str) -> None:
    """Deletes every INPUT rule carrying our comment, whatever its other parameters were."""
    rules = run(*_in_ns(host, tool("iptables"), "-S", "INPUT")).stdout.splitlines()
    tagged = re.compile(rf'--comment "?{re.escape(tag)}"?( |$)')
    for rule in filter(tagged.search, rules):
        words = shlex.split(rule)
        run(*_in_ns(host, tool("iptables"), "-D", *words[1:]))


def fault_link(settings: Settings, host: Host, on: bool, value: str) -> None:
    run("ip", "-n", host.namespace, "link", "set", host.ifname, "down" if on else "up")


def fault_loss(settings: Settings, host: Host, on: bool, value: str) -> None:
    delete_tagged_rules(host, "hvsim-loss")
    if on:
        # Not on lo: a lossy NIC does not make a host lose packets to itself.
        run(*_in_ns(host, tool("iptables"), "-A", "INPUT", "!", "-i", "lo", "-m", "statistic",
                    "--mode", "random", "--probability", f"{float(value) / 100:.4f}",
                    "-m", "comment", "--comment", "hvsim-loss", "-j", "DROP"))


def fault_delay(settings: Settings, host: Host, on: bool, value: str) -> None:
    qdisc = ("tc", "-n", host.namespace, "qdisc")
    if not on:
        run(*qdisc, "del", "dev", host.ifname, "root", check=False)
        return
    proc = run(*qdisc, "replace", "dev", host.ifname, "root", "netem", "delay", f"{value}ms",
               check=False)
    if proc.returncode == 0:
        return
    err = (proc.stderr or proc.stdout).strip()
    if any(word in err for word in NO_NETEM):
        raise UserError("this kernel has no netem qdisc (sch_netem)",
                        "delay cannot be simulated", Exit.UNSUPPORTED)
    raise UserError(f"tc could not add netem delay on {host.ifname}: {err}", code=Exit.FAILED)


def fault_sshd(settings: Settings, host: Host, on: bool, value: str) -> None:
    if on:
        stop_sshd(settings, host.name)
    elif sshd_pid(settings, host.name) is None:
        start_sshd(settings, host.name)


def fault_firewall(settings: Settings, host: Host, on: bool, value: str) -> None:
    if not on:
        delete_tagged_rules(host, "hvsim-firewall")
    elif not ok(*_in_ns(host, tool("iptables"), "-C", *FIREWALL_RULE)):
        run(*_in_ns(host, tool("iptables"), "-A", *FIREWALL_RULE))


def fault_mtu(settings: Settings, host: Host, on: bool, value: str) -> None:
    mtu = check_mtu(value) if on else 1500
    run("ip", "-n", host.namespace, "link", "set", host.ifname, "mtu", str(mtu))


def fault_debian_hosts(settings: Settings, host: Host, on: bool, value: str) -> None:
    path = settings.etc_dir(host.name) / "hosts"
    if not path.is_file():
        raise UserError(f"{path} is missing", UP_HINT, Exit.FAILED)
    set_debian_line(path, host.name, on)


FAULTS: dict[str, Callable[[Settings, Host, bool, str], None]] = {
    "link": fault_link, "loss": fault_loss, "delay": fault_delay, "sshd": fault_sshd,
    "firewall": fault_firewall, "mtu": fault_mtu, "debian-hosts": fault_debian_hosts}
