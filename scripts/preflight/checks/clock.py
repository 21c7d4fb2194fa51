"""Do the hosts' clocks agree.

Ids:
- `clock.skew`: the host's clock (the probe's time.time()) against the launcher's clock at the
  midpoint of the request; the uncertainty is half the round trip, and only skew beyond it
  counts. Warn above WARN_S, fail above FAIL_S. When most hosts agree with each other and not
  with the launcher, the launcher is the odd one out: every host is judged against the median
  clock instead, and the launcher is the one that warns or fails.
"""

from __future__ import annotations

import statistics

from ..result import CheckResult, failed, no_facts, passed, warned
from .context import Context

FAMILY = "clock"
IDS = ("clock.skew",)
STAGE = "host"

WARN_S = 1.0
FAIL_S = 60.0


def check(host: str, ctx: Context) -> list[CheckResult]:
    f, probe = ctx.facts.get(host), ctx.probes[host]
    if f is None:
        return no_facts(*IDS)
    consensus = median_skew(ctx)
    if abs(consensus) <= WARN_S:  # the launcher keeps time with the others: it is the clock
        return [check_skew(host, f.time, probe.sent, probe.received)]
    basis = f"against most hosts (the launcher is {-consensus:+.3f} s off them)"
    return [check_skew(host, f.time - consensus, probe.sent, probe.received, basis)]


def median_skew(ctx: Context) -> float:
    """The median of every probed host's skew against the launcher (the launcher's own is 0)."""
    skews = [f.time - (ctx.probes[h].sent + ctx.probes[h].received) / 2
             for h, f in ctx.facts.items()]
    return statistics.median(skews) if len(skews) > 2 else 0.0


def check_skew(host: str, remote_time: float, sent: float, received: float,
               basis: str = "against the launcher") -> CheckResult:
    """sent/received: the launcher's time.time() before the request and after the answer."""
    skew = remote_time - (sent + received) / 2
    uncertainty = max(0.0, (received - sent) / 2)
    beyond = abs(skew) - uncertainty
    detail = f"{skew:+.3f} s (± {uncertainty:.3f} s) {basis}"
    remedy = f"enable time sync (chrony or systemd-timesyncd) on {host}"
    if beyond > FAIL_S:
        return failed("clock.skew", detail, remedy)
    if beyond > WARN_S:
        return warned("clock.skew", detail, remedy)
    return passed("clock.skew", detail)
