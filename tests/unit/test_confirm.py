"""Confirm before condemning: a host that fails the probe is tried again once the others have
answered, and the verdict says how it went (ssh.login)."""

from __future__ import annotations

import threading
import time

from preflight.checks.ssh import confirmed
from preflight.facts import HostProbe
from preflight.pipeline import probe_hosts
from preflight.proc import Ran
from preflight.result import Status, failed, passed

TIMEOUT_S = 3.0


def answer(host: str, seconds: float, ok: bool) -> HostProbe:
    """What probe_host returns after `seconds`: facts (a stand-in object) or a timeout."""
    time.sleep(seconds)
    run = Ran(("ssh", host), 0 if ok else -15, "", "", seconds, None if ok else "timeout",
              0.0 if ok else TIMEOUT_S)
    now = time.time()
    return HostProbe(host, False, run, object() if ok else None, None, now - seconds, now)


def stand_in(behaviour: dict[str, list[tuple[float, bool]]]):
    """attempt(host): the host's next (seconds, ok) from its list; records each try."""
    tries: dict[str, int] = {}
    lock = threading.Lock()

    def attempt(host: str) -> HostProbe:
        with lock:
            n = tries.get(host, 0)
            tries[host] = n + 1
        seconds, ok = behaviour[host][min(n, len(behaviour[host]) - 1)]
        return answer(host, seconds, ok)
    return attempt, tries


def test_healthy_hosts_are_probed_once():
    attempt, tries = stand_in({f"h{i}": [(0.1, True)] for i in range(1, 6)})
    probes = probe_hosts([f"h{i}" for i in range(1, 6)], attempt)
    assert tries == {f"h{i}": 1 for i in range(1, 6)}
    assert all(p.first is None for p in probes.values())


def test_a_dead_host_is_tried_again_after_the_crowd_within_one_timeout_more():
    behaviour = {f"h{i}": [(0.1, True)] for i in range(1, 6)}
    behaviour["h3"] = [(TIMEOUT_S, False)]
    attempt, tries = stand_in(behaviour)
    start = time.monotonic()
    probes = probe_hosts(list(behaviour), attempt)
    took = time.monotonic() - start
    assert tries["h3"] == 2
    assert probes["h3"].facts is None and probes["h3"].first is not None
    # The second try starts once the crowd is done (2 s at the least), not after the first
    # try's timeout: the dead host costs about one timeout over the healthy time.
    assert took < 2.0 + TIMEOUT_S + 1.0, took


def test_a_host_that_answers_only_when_tried_again_keeps_its_facts_and_the_first_try():
    behaviour = {f"h{i}": [(0.1, True)] for i in range(1, 4)}
    behaviour["h2"] = [(TIMEOUT_S, False), (0.5, True)]
    attempt, _ = stand_in(behaviour)
    probes = probe_hosts(list(behaviour), attempt)
    assert probes["h2"].facts is not None
    assert probes["h2"].first is not None and probes["h2"].first.timed_out


def test_a_login_that_passes_only_the_second_time_warns_with_its_time():
    first = Ran(("ssh", "h2"), -15, "", "", 10.0, "timeout", 10.0)
    second = Ran(("ssh", "h2"), 0, "{}", "", 12.3)
    result = confirmed("h2", passed("ssh.login", "key login in 12.30 s"), first, second, 10)
    assert result.status is Status.WARN
    assert result.detail == ("answered only when tried again after the other hosts, in 12.3 s "
                             "(the first try: no answer within 10 s)")
    assert "time ssh h2 true" in result.remedy


def test_a_login_that_fails_twice_fails_and_says_so():
    first = Ran(("ssh", "h2"), -15, "", "", 10.0, "timeout", 10.0)
    login = failed("ssh.login", "no answer from h2 within 10 s", "check h2")
    result = confirmed("h2", login, first, first, 10)
    assert result.status is Status.FAIL
    assert result.detail.endswith("; also when tried again alone, after the other hosts")
