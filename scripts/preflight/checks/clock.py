"""Do the hosts' clocks agree with the launcher's.

Ids:
- `clock.skew`: the host's clock (the probe's time.time()) against the launcher's clock at the
  midpoint of the request; the uncertainty is half the round trip, and only skew beyond it
  counts. Warn above WARN_S, fail above FAIL_S.
"""

from __future__ import annotations

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
    return [check_skew(host, f.time, probe.sent, probe.received)]


def check_skew(host: str, remote_time: float, sent: float, received: float) -> CheckResult:
    """sent/received: the launcher's time.time() before the request and after the answer."""
    skew = remote_time - (sent + received) / 2
    uncertainty = max(0.0, (received - sent) / 2)
    beyond = abs(skew) - uncertainty
    detail = f"{skew:+.3f} s (± {uncertainty:.3f} s) against the launcher"
    remedy = f"enable time sync (chrony or systemd-timesyncd) on {host}"
    if beyond > FAIL_S:
        return failed("clock.skew", detail, remedy)
    if beyond > WARN_S:
        return warned("clock.skew", detail, remedy)
    return passed("clock.skew", detail)
