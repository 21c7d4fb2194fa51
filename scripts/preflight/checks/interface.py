"""Which interface the job uses: the one subnet through which every host reaches every other.

Ids:
- `interface.summary`: the host's interfaces, compactly (always pass; for the reader).
- `interface.choice`: the host has an address in the chosen subnet. The detail names the
  interface, the address, the interfaces passed over and why (a docker0-like bridge with the same
  address on several hosts, a subnet that reaches no other host, loopback, link-local, down).
- `interface.public`: the host's address on the chosen interface is private (warn if public:
  training traffic is unencrypted).

The choice itself is made in preflight/choice.py; these are the verdicts per host.
"""

from __future__ import annotations

import ipaddress

from ..choice import LOOPBACK_CIDR, InterfaceChoice, usable
from ..facts import Facts
from ..result import CheckResult, failed, no_facts, passed, warned
from .context import Context

FAMILY = "interface"
IDS = ("interface.summary", "interface.choice", "interface.public")
STAGE = "host"


def check(host: str, ctx: Context) -> list[CheckResult]:
    f = ctx.facts.get(host)
    if f is None:
        return no_facts("interface.summary", "interface.choice")
    return [check_summary(f), *check_choice(host, ctx.choice, f)]


def check_choice(host: str, choice: InterfaceChoice, f: Facts | None) -> list[CheckResult]:
    """interface.choice and interface.public for one host."""
    over = choice.passed_over_for(host)
    tail = f"; passed over: {'; '.join(over)}" if over else ""
    if choice.cidr == LOOPBACK_CIDR and host in choice.names:
        return [passed("interface.choice", "one host: processes talk over loopback" + tail),
                passed("interface.public", "loopback")]
    if choice.cidr is None:
        mine = ", ".join(f"{i.name} {a}" for i, a in usable(f)) if f else "no facts"
        return [failed("interface.choice",
                       f"no subnet reaches more than one host (this host: {mine or 'none'})"
                       + tail,
                       "put the hosts on one network (an address in the same subnet on each), "
                       "then run make preflight again")]
    if host not in choice.names:
        return [failed("interface.choice",
                       f"{host} has no address in {choice.cidr}, the subnet that reaches "
                       f"{choice.reach} of {choice.of} hosts" + tail,
                       f"give {host} an address in {choice.cidr} on the network the other hosts "
                       "share, or remove it from the inventory")]
    name, address = choice.names[host], choice.addresses[host]
    detail = (f"{name} {address} in {choice.cidr}, reaches {choice.reach} of {choice.of} "
              "hosts")
    if choice.names_differ:
        per_host = ", ".join(f"{h} {n}" for h, n in choice.names.items())
        detail += f"; names differ: {per_host}; Open MPI gets the CIDR, Gloo/NCCL the names"
    return [passed("interface.choice", detail + tail), check_public(host, name, address)]


def check_public(host: str, name: str, address: str) -> CheckResult:
    if ipaddress.ip_address(address).is_global:
        return warned("interface.public",
                      f"{name} {address} on {host} is a public address; training traffic is "
                      "unencrypted",
                      f"prefer a private network for training, or firewall {host} so only the "
                      "cluster hosts reach it")
    return passed("interface.public", f"{address} is not public")


def check_summary(f: Facts) -> CheckResult:
    """Every interface: addresses with their class, MAC, MTU, speed, state, physical or not."""
    return passed("interface.summary", "; ".join(i.summary() for i in f.interfaces) or "none")
