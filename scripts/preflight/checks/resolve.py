"""Do the hosts' names resolve, on every host, to the same addresses, never to loopback, and
does every host have a name of its own.

A name that fails to resolve on most hosts is the name's fault (resolve.name on its host); on a
minority of hosts it is theirs (their resolver: resolve.peers there). The name's own host does
not count in that vote: its view of itself is the one a stray /etc/hosts line bends.

Ids:
- `resolve.name`: the host's inventory name resolves on most other hosts, and to the same
  addresses everywhere (the host's own view of itself is left to resolve.loopback).
- `resolve.peers`: the host resolves the inventory names that most hosts resolve.
- `resolve.identity`: no other host reports the same hostname, and the host's hostname does
  not resolve, on the host, to an address that is not its own. A warning for MPI on CPUs; a
  failure for Gloo (elastic) and GPU (NCCL) jobs, which group ranks by host name.
- `resolve.loopback`: in a multi-host job, the host's name (and its hostname) does not resolve
  to 127.x or ::1 on the host itself, as Debian's `127.0.1.1 HOST` line in /etc/hosts makes it:
  MPI and Gloo would then advertise loopback to the other hosts. One host alone: loopback is fine.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from ..facts import Facts, Resolution
from ..result import CheckResult, failed, no_facts, passed, skipped, warned
from .context import Context

FAMILY = "resolve"
NAME, LOOPBACK, PEERS, IDENTITY = ("resolve.name", "resolve.loopback", "resolve.peers",
                                   "resolve.identity")
IDS = (NAME, LOOPBACK, PEERS, IDENTITY)
STAGE = "host"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def check(host: str, ctx: Context) -> list[CheckResult]:
    # resolve.name needs the other hosts' facts, resolve.loopback the host's own.
    found = [check_name(host, ctx.facts)] if ctx.facts else []
    f = ctx.facts.get(host)
    if f is None:
        return found + no_facts(LOOPBACK, PEERS, IDENTITY)
    return [*found, check_loopback(host, f, ctx.multi_host),
            check_peers(host, list(ctx.probes), ctx.facts),
            check_identity(host, ctx.facts, ctx.strict_names)]


def missing_views(host: str, facts: Mapping[str, Facts]) -> list[str]:
    """The probed hosts on which `host` does not resolve."""
    return sorted(o for o, f in facts.items() if not (f.resolution(host) or Resolution()).ok)


def name_at_fault(host: str, facts: Mapping[str, Facts]) -> bool:
    """True when the name itself is wrong: most other hosts fail to resolve it (or, with no
    other host to ask, the host itself fails)."""
    others = [o for o in facts if o != host]
    missing = missing_views(host, facts)
    if not others:
        return bool(missing)
    return 2 * len([o for o in missing if o != host]) > len(others)


def check_name(host: str, facts: Mapping[str, Facts]) -> CheckResult:
    """resolve.name for `host`, from what every probed host resolved it to."""
    views = {observer: f.resolution(host) or Resolution(error="not asked")
             for observer, f in facts.items()}
    if not views:
        return warned(NAME, f"no host was probed to resolve {host}",
                      "fix the ssh failures first, then run make preflight again")
    missing = sorted(o for o, r in views.items() if not r.ok)
    if missing and name_at_fault(host, facts):
        return failed(NAME, f"{host} does not resolve on {', '.join(missing)}",
                      f"add {host} with its address to /etc/hosts (or DNS) on "
                      f"{', '.join(missing)}")
    tail = (f"; {', '.join(missing)} cannot resolve it (their resolver: see resolve.peers "
            "there)" if missing else "")
    others = {o: r.addresses for o, r in views.items()
              if r.ok and (o != host or not r.loopback)}
    distinct = set(others.values())
    if len(distinct) > 1:
        seen = "; ".join(f"{o}: {' '.join(a)}" for o, a in sorted(others.items()))
        return warned(NAME, f"{host} resolves differently across hosts ({seen}){tail}",
                      f"make {host} resolve to the same address on every host (/etc/hosts or "
                      "DNS)")
    if distinct:
        addresses = " ".join(next(iter(distinct)))
    else:  # only the host itself answered, with loopback (resolve.loopback judges that)
        addresses = " ".join(views[host].addresses) + " (itself)"
    resolved_on = len(views) - len(missing)
    return passed(NAME, f"{host} -> {addresses} on {resolved_on} host(s){tail}")


def check_peers(host: str, names: list[str], facts: Mapping[str, Facts]) -> CheckResult:
    """resolve.peers: the names this host cannot resolve while most others can."""
    mine = facts[host]
    cannot = [n for n in names if n != host and mine.resolution(n) is not None
              and not mine.resolution(n).ok and not name_at_fault(n, facts)]
    if not cannot:
        return passed(PEERS, f"resolves the {len(names) - 1} other inventory name(s)")
    why = mine.resolution(cannot[0]).error or "no address"
    return failed(PEERS, f"{host} cannot resolve {', '.join(cannot)} ({why}), which the other "
                         "hosts resolve",
                  f"fix the resolver on {host}: add {', '.join(cannot)} with "
                  f"{'its address' if len(cannot) == 1 else 'their addresses'} to /etc/hosts "
                  "there, or correct its DNS settings (/etc/resolv.conf)")


def check_identity(host: str, facts: Mapping[str, Facts], strict: bool) -> CheckResult:
    """resolve.identity: a hostname of its own, resolving on the host to the host itself."""
    f = facts[host]
    problem = twin_hostnames(host, facts) or foreign_hostname(host, facts)
    if problem is None:
        return passed(IDENTITY, f"hostname {f.hostname} is this host's alone")
    detail, remedy = problem
    if strict:
        return failed(IDENTITY, detail + "; Gloo (elastic) and NCCL group ranks by host name, "
                                "so this job would misplace ranks or hang", remedy)
    return warned(IDENTITY, detail + "; MPI on CPUs copes, Gloo (elastic) and NCCL jobs would "
                            "not", remedy)


def short(hostname: str) -> str:
    return hostname.split(".")[0].lower()


def twin_hostnames(host: str, facts: Mapping[str, Facts]) -> tuple[str, str] | None:
    name = facts[host].hostname
    twins = sorted(o for o, g in facts.items() if o != host and short(g.hostname) == short(name))
    if not twins:
        return None
    return (f"{host} and {', '.join(twins)} report the same hostname {name}",
            f"give each host a name of its own: hostnamectl set-hostname NEWNAME on {host} "
            f"(or on {twins[0]}), and map it to that host's address in /etc/hosts everywhere")


def own_addresses(f: Facts) -> set[str]:
    return {str(a.ip) for i in f.interfaces for a in (*i.ipv4, *i.ipv6)}


def foreign_hostname(host: str, facts: Mapping[str, Facts]) -> tuple[str, str] | None:
    f = facts[host]
    resolution = f.resolution(f.hostname)
    if resolution is None or not f.interfaces:
        return None
    addresses = [a for a in resolution.addresses if a not in resolution.loopback]
    if not addresses or set(addresses) & own_addresses(f):
        return None
    owners = sorted(o for o, g in facts.items() if o != host and set(addresses) & own_addresses(g))
    whose = f"the address of {', '.join(owners)}" if owners else "an address of no interface here"
    return (f"{host}'s own hostname {f.hostname} resolves on {host} to "
            f"{' '.join(addresses)}, {whose}",
            f"map {f.hostname} to {host}'s own address in /etc/hosts on {host} (or fix its DNS "
            "record)")


def check_loopback(host: str, facts: Facts | None, multi_host: bool) -> CheckResult:
    """resolve.loopback: `host` must not resolve to loopback on itself when it has peers."""
    if not multi_host:
        return passed("resolve.loopback", "one host: loopback is fine")
    if is_loopback_name(host):
        return failed("resolve.loopback",
                      f"{host} means a different machine on every host",
                      f"name this machine by its host name or address instead of {host} in the "
                      "inventory")
    if facts is None:
        return skipped("resolve.loopback", "no facts from this host")
    for name in dict.fromkeys([host, facts.hostname]):
        resolution = facts.resolution(name)
        if resolution is not None and resolution.loopback:
            loop = " ".join(resolution.loopback)
            return failed("resolve.loopback",
                          f"{name} resolves to {loop} on {host}; MPI would bind to loopback",
                          f"remove the '{loop} {name}' line from /etc/hosts on {host} or map "
                          f"{name} to its real address")
    return passed("resolve.loopback", f"{host} resolves to a non-loopback address on itself")


def is_loopback_name(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolved_addresses(host: str, facts: Mapping[str, Facts]) -> set[str]:
    """Every non-loopback address that any host resolved `host` to."""
    found: set[str] = set()
    for f in facts.values():
        resolution = f.resolution(host)
        if resolution is not None:
            found.update(a for a in resolution.addresses if a not in resolution.loopback)
    return found
