"""Do the hosts' names resolve, on every host, to the same addresses, and never to loopback.

Ids:
- `resolve.name`: the host's inventory name resolves on every probed host, and to the same
  addresses everywhere (the host's own view of itself is left to resolve.loopback).
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
IDS = ("resolve.name", "resolve.loopback")
STAGE = "host"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def check(host: str, ctx: Context) -> list[CheckResult]:
    # resolve.name needs the other hosts' facts, resolve.loopback the host's own.
    found = [check_name(host, ctx.facts)] if ctx.facts else []
    f = ctx.facts.get(host)
    if f is None:
        return found + no_facts("resolve.loopback")
    return [*found, check_loopback(host, f, ctx.multi_host)]


def check_name(host: str, facts: Mapping[str, Facts]) -> CheckResult:
    """resolve.name for `host`, from what every probed host resolved it to."""
    views = {observer: f.resolution(host) or Resolution(error="not asked")
             for observer, f in facts.items()}
    if not views:
        return warned("resolve.name", f"no host was probed to resolve {host}",
                      "fix the ssh failures first, then run make preflight again")
    missing = sorted(o for o, r in views.items() if not r.ok)
    if missing:
        return failed("resolve.name", f"{host} does not resolve on {', '.join(missing)}",
                      f"add {host} with its address to /etc/hosts (or DNS) on "
                      f"{', '.join(missing)}")
    others = {o: r.addresses for o, r in views.items() if o != host or not r.loopback}
    distinct = set(others.values())
    if len(distinct) > 1:
        seen = "; ".join(f"{o}: {' '.join(a)}" for o, a in sorted(others.items()))
        return warned("resolve.name", f"{host} resolves differently across hosts ({seen})",
                      f"make {host} resolve to the same address on every host (/etc/hosts or "
                      "DNS)")
    if distinct:
        addresses = " ".join(next(iter(distinct)))
    else:  # only the host itself answered, with loopback (resolve.loopback judges that)
        addresses = " ".join(views[host].addresses) + " (itself)"
    return passed("resolve.name", f"{host} -> {addresses} on {len(views)} host(s)")


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
