"""mpi.*: the pair schedule, the mpirun command, mapping results to hosts, and real local runs."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time

import pytest

from preflight import proc
from preflight.active.mpi import (
    missing_tools,
    mpirun_argv,
    pair_wait_s,
    rank_layout,
    run_mpi,
    will_hang,
)
from preflight.agents import parse_event
from preflight.agents.mpi_probe import opener, partner, round_robin
from preflight.checks.mpi import (
    MpiHost,
    ProbeOutput,
    explain_exit,
    group_failure,
    map_results,
    measurements,
    parse_output,
    what_happened,
)
from preflight.proc import Ran
from preflight.result import Status

HOSTS = [MpiHost(f"h{i}", f"10.231.0.{10 + i}", 2) for i in (1, 2, 3)]
LAYOUT = ["h1", "h2", "h3"]
CIDR = "10.231.0.0/24"


def a_run(**kwargs) -> Ran:
    fields = {"argv": ("mpirun",), "returncode": 0, "stdout": "", "stderr": "", "seconds": 1.5}
    return Ran(**{**fields, **kwargs})


def pair(a: int, b: int, us: float, mbps: tuple[float, float] | None = None) -> dict:
    return {"event": "pair", "a": a, "b": b, "latency_us": us,
            "MBps": {"a_b": mbps[0], "b_a": mbps[1]} if mbps else None}


def output(pairs=None, ok=True, n=3) -> ProbeOutput:
    """What the probe prints on a good run: every rank started, every pair done, a result."""
    pairs = pairs if pairs is not None else [pair(0, 1, 40.0), pair(2, 0, 50.0),
                                             pair(1, 2, 45.0)]
    result = {"event": "result", "size": n, "hosts": LAYOUT[:n],
              "allreduce": {"ok": ok, "sum_of_ranks": 3 if ok else 4, "expected": 3,
                            "array_ok": ok, "array_len": 4096}}
    every = frozenset((a, b) for a in range(n) for b in range(n) if a != b)
    return ProbeOutput(started=frozenset(range(n)), attempts=every, left=every,
                       pairs=tuple(pairs), result=result)


def stdout_of(*events: dict) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


# --- the round-robin schedule -------------------------------------------------------------------

@pytest.mark.parametrize("n", range(1, 12))
def test_round_robin_holds_every_pair_exactly_once_in_disjoint_rounds(n):
    rounds = round_robin(n)
    pairs = [p for r in rounds for p in r]
    assert sorted(pairs) == list(itertools.combinations(range(n), 2))
    for r in rounds:
        ranks = [rank for p in r for rank in p]
        assert len(ranks) == len(set(ranks)), f"round {r} uses a rank twice"


@pytest.mark.parametrize("n", [2, 4, 6, 8, 16])
def test_an_even_number_of_ranks_needs_n_minus_one_rounds(n):
    assert len(round_robin(n)) == n - 1
    assert all(len(r) == n // 2 for r in round_robin(n))


@pytest.mark.parametrize("n", [3, 5, 7, 9])
def test_an_odd_number_of_ranks_needs_n_rounds_with_one_rank_sitting_out(n):
    assert len(round_robin(n)) == n
    assert all(len(r) == n // 2 for r in round_robin(n))


@pytest.mark.parametrize("n", range(3, 12))
def test_every_rank_has_a_connection_opened_towards_it(n):
    # So a host that drops incoming connections always hangs its pair, whoever it is.
    targets = {b if opener(a, b, n) == a else a for a, b in itertools.combinations(range(n), 2)}
    assert targets == set(range(n))


def test_with_three_ranks_connections_go_round_the_circle():
    assert [opener(a, b, 3) for a, b in [(0, 1), (1, 2), (0, 2)]] == [0, 1, 2]


def test_a_rank_finds_its_partner_or_sits_out():
    assert partner([(0, 3), (1, 2)], 3) == 0
    assert partner([(0, 3), (1, 2)], 1) == 2
    assert partner([(0, 3)], 1) is None


# --- the mpirun command -------------------------------------------------------------------------

def test_mpirun_places_one_rank_per_host_on_the_chosen_network_over_tcp():
    argv = mpirun_argv(HOSTS, LAYOUT, CIDR, "/venv/bin/python", bandwidth=False, uid=1000)
    joined = " ".join(argv)
    assert argv[:3] == ["mpirun", "-np", "3"]
    assert "-H h1:1,h2:1,h3:1" in joined
    assert f"--mca btl_tcp_if_include {CIDR}" in joined
    assert f"--mca oob_tcp_if_include {CIDR}" in joined
    assert "--mca btl self,tcp" in joined and "--mca pml ob1" in joined
    assert "--bind-to none" in joined
    assert "--mca btl_tcp_port_min_v4 1025" in joined
    assert "--allow-run-as-root" not in argv
    assert "plm_rsh_no_tree_spawn" not in argv
    assert argv[argv.index("/venv/bin/python") + 1] == "-c"
    assert "--bandwidth" not in argv


def test_mpirun_rides_on_the_preflights_ssh_connections_when_given_them():
    argv = mpirun_argv(HOSTS, LAYOUT, CIDR, "/venv/bin/python", bandwidth=False, uid=1000,
                       ssh_args=["-o", "ControlMaster=no", "-o", "ControlPath=/tmp/pf/%C"])
    rsh = argv[argv.index("plm_rsh_args") + 1]
    assert rsh == ("-o BatchMode=yes -o ConnectTimeout=5 -o ControlMaster=no "
                   "-o ControlPath=/tmp/pf/%C")
    assert argv[argv.index("plm_rsh_no_tree_spawn") + 1] == "1"


def test_mpirun_as_root_says_so_and_bandwidth_is_asked_for():
    argv = mpirun_argv(HOSTS, LAYOUT, CIDR, "/venv/bin/python", bandwidth=True, uid=0)
    assert "--allow-run-as-root" in argv
    assert argv[-1] == "--bandwidth"


def test_a_lone_host_with_two_slots_runs_two_ranks_so_tcp_is_crossed():
    assert rank_layout([MpiHost("localhost", "127.0.0.1", 2)]) == ["localhost", "localhost"]
    assert rank_layout([MpiHost("localhost", "127.0.0.1", 1)]) == ["localhost"]
    assert rank_layout(HOSTS) == LAYOUT


# --- mapping results to hosts -------------------------------------------------------------------

def test_a_checked_allreduce_passes_every_host_with_a_symmetric_latency_matrix():
    results = map_results(HOSTS, LAYOUT, output(), a_run(), "eth0", False)
    assert {h: [c.status for c in cs] for h, cs in results.items()} == {
        h: [Status.PASS, Status.PASS] for h in LAYOUT}
    assert "allreduce over 3 ranks on h1, h2, h3 checked" in results["h1"][0].detail
    assert measurements(output(), LAYOUT)["latency_us"] == {
        "h1": {"h2": 40.0, "h3": 50.0}, "h2": {"h1": 40.0, "h3": 45.0},
        "h3": {"h1": 50.0, "h2": 45.0}}


def test_a_wrong_allreduce_fails_with_a_remedy():
    results = map_results(HOSTS, LAYOUT, output(ok=False), a_run(), "eth0", False)
    assert results["h2"][0].status is Status.FAIL
    assert "wrong values" in results["h2"][0].detail


def test_latency_far_above_the_rest_warns_only_the_slow_host():
    hosts = [*HOSTS, MpiHost("h4", "10.231.0.14", 1)]
    layout = [*LAYOUT, "h4"]
    pairs = [pair(0, 1, 40.0), pair(0, 2, 4000.0), pair(3, 0, 42.0), pair(1, 2, 3900.0),
             pair(1, 3, 41.0), pair(2, 3, 4100.0)]
    results = map_results(hosts, layout, output(pairs, n=4), a_run(), "eth0", False)
    assert {h: cs[1].status for h, cs in results.items()} == {
        "h1": Status.PASS, "h2": Status.PASS, "h3": Status.WARN, "h4": Status.PASS}
    assert "ping -c 100 h3" in results["h3"][1].remedy


def test_with_three_hosts_a_slow_one_is_still_the_one_named():
    pairs = [pair(0, 1, 40.0), pair(2, 0, 4000.0), pair(1, 2, 3900.0)]
    results = map_results(HOSTS, LAYOUT, output(pairs), a_run(), "eth0", False)
    assert {h: cs[1].status for h, cs in results.items()} == {
        "h1": Status.PASS, "h2": Status.PASS, "h3": Status.WARN}


def test_bandwidth_is_kept_per_direction_for_every_pair():
    pairs = [pair(0, 1, 40.0, (1001.0, 1010.0)), pair(2, 0, 50.0, (1020.0, 1002.0)),
             pair(1, 2, 45.0, (1012.0, 1021.0))]
    results = map_results(HOSTS, LAYOUT, output(pairs), a_run(), "eth0", True)
    rates = measurements(output(pairs), LAYOUT)["bandwidth_MBps"]
    assert rates["h1"] == {"h2": 1001.0, "h3": 1002.0}
    assert rates["h3"] == {"h1": 1020.0, "h2": 1021.0}
    assert [c.id for c in results["h1"]] == ["mpi.allreduce", "mpi.latency", "mpi.bandwidth"]
    assert results["h1"][2].status is Status.PASS


def test_what_happened_says_how_far_a_hung_run_got():
    run = a_run(returncode=-15, stopped="timeout", seconds=17.2, limit_s=15)
    assert what_happened(run, ProbeOutput(), 3) == "hung for 15 s before any rank started"
    assert what_happened(run, ProbeOutput(started=frozenset({0, 2})), 3) == (
        "hung for 15 s with 2 of 3 ranks started")
    out = ProbeOutput(started=frozenset(range(3)), attempts=frozenset({(0, 1), (1, 0)}))
    assert what_happened(run, out, 3) == "hung for 15 s with 1 pair(s) never connected"
    stopped = a_run(returncode=-15, stopped="hopeless", seconds=6.4)
    assert what_happened(stopped) == "was stopped after 6 s, as it could only hang"
    assert what_happened(a_run(returncode=1, stderr="boom\n")) == "mpirun exited with 1: boom"


def test_a_group_failure_no_host_explains_is_the_same_verdict_for_all_with_a_remedy():
    run = a_run(returncode=1, stderr="boom\n")
    results = group_failure(HOSTS, LAYOUT, run, "eth0", CIDR)
    assert {h: cs[0].status for h, cs in results.items()} == {h: Status.FAIL for h in LAYOUT}
    assert results["h1"][0].detail == ("mpirun over h1, h2, h3 mpirun exited with 1: boom, and "
                                       "no host could be shown at fault on its own")
    assert "1024-65535" in results["h1"][0].remedy


def test_a_group_that_only_hung_with_nobody_at_fault_warns_and_keeps_every_host():
    run = a_run(returncode=-15, stopped="timeout", seconds=17.2, limit_s=15)
    results = group_failure(HOSTS, LAYOUT, run, "eth0", CIDR)
    assert {h: cs[0].status for h, cs in results.items()} == {h: Status.WARN for h in LAYOUT}
    assert results["h1"][0].detail == ("mpirun over h1, h2, h3 hung for 15 s before any rank "
                                       "started, and no host could be shown at fault on its "
                                       "own: kept")
    assert "--start-timeout" in results["h1"][0].remedy


def test_the_run_is_hopeless_once_every_rank_left_its_pairs_and_one_was_stuck():
    check = will_hang(3)
    lines = [{"event": "stuck", "rank": 1, "peer": 2}, {"event": "stuck", "rank": 2, "peer": 1},
             {"event": "done", "rank": 0, "peer": 2}, {"event": "done", "rank": 2, "peer": 0},
             {"event": "done", "rank": 0, "peer": 1}]
    assert not check(stdout_of(*lines))  # rank 1 has not left h1 yet
    assert check(stdout_of(*lines, {"event": "done", "rank": 1, "peer": 0}))
    healthy = [{"event": "done", "rank": r, "peer": p} for r in range(3) for p in range(3)
               if r != p]
    assert not check(stdout_of(*healthy))


def test_the_pair_wait_shares_the_timeout_between_rounds_within_bounds():
    assert pair_wait_s(15, 3) == 2.5  # 0.7 * 15 s over 3 rounds, less 1 s of each slot
    assert pair_wait_s(60, 3) == 5.0
    assert pair_wait_s(15, 32) == 1.5


def test_probe_lines_are_sorted_by_kind_and_chatter_is_dropped():
    text = ("Warning: Permanently added 'h2' to the list of known hosts.\n" + stdout_of(
        {"event": "init", "rank": 0, "host": "h1"}, {"event": "start", "rank": 0, "peer": 1},
        pair(0, 1, 40.0), {"event": "result", "allreduce": {"ok": True}}))
    parsed = parse_output(text)
    assert parsed.started == {0} and parsed.attempts == {(0, 1)} and not parsed.stuck
    assert parsed.pairs == (pair(0, 1, 40.0),)
    assert parsed.result == {"event": "result", "allreduce": {"ok": True}}


def test_a_missing_mpi4py_on_a_host_asks_for_make_setup():
    run = a_run(returncode=1, stderr="ModuleNotFoundError: No module named 'mpi4py'\n")
    detail, remedy = explain_exit(run, ["h1", "h2", "h3"])
    assert "mpi4py" in detail and "make setup" in remedy


# --- fault isolation: one bad host never takes the healthy ones down ---------------------------

ORTE_FAILURE = """\
--------------------------------------------------------------------------
ORTE was unable to reliably start one or more daemons.
This usually is caused by:

* not finding the required libraries and/or binaries on
  one or more nodes. Please check your PATH and LD_LIBRARY_PATH
  settings, or configure OMPI with --enable-orterun-prefix-by-default
--------------------------------------------------------------------------
"""


HUNG = {"returncode": -15, "stopped": "timeout", "seconds": 10.0, "limit_s": 10.0}


def stand_in_mpirun(monkeypatch, fails) -> list[list[str]]:
    """active.mpi.launch replaced: fails(names, tries of this group so far) says how a group
    fails ("exit": as mpirun does when a daemon cannot start, "hang": at its time limit), or
    None for a good result. Returns the groups tried, in order."""
    from preflight.active import mpi as active_mpi

    tried: list[list[str]] = []

    def launch(hosts, cidr, python, bandwidth, ssh_args, limit_s, start_s=None, seed=0):
        names = [h.name for h in hosts]
        how = fails(names, tried.count(names))
        tried.append(names)
        if how == "exit":
            return active_mpi.Attempt(tuple(hosts), tuple(names),
                                      a_run(returncode=1, stderr=ORTE_FAILURE), ProbeOutput())
        if how == "hang":
            return active_mpi.Attempt(tuple(hosts), tuple(names), a_run(**HUNG), ProbeOutput())
        if isinstance(how, tuple):  # ("cut", host): every rank started, pairs to host never met
            at = names.index(how[1])
            cut = frozenset((r, at) for r in range(len(names)) if r != at)
            return active_mpi.Attempt(tuple(hosts), tuple(names), a_run(**HUNG), ProbeOutput(
                started=frozenset(range(len(names))), cut=cut))
        n = len(names)
        pairs = [pair(a, b, 40.0) for a, b in itertools.combinations(range(n), 2)]
        good = output(pairs, n=n)
        good = ProbeOutput(started=good.started, attempts=good.attempts, left=good.left,
                           pairs=good.pairs, result={**good.result, "hosts": names})
        return active_mpi.Attempt(tuple(hosts), tuple(names), a_run(), good, bandwidth)

    monkeypatch.setattr(active_mpi, "launch", launch)
    monkeypatch.setattr(active_mpi, "missing_tools", lambda python: None)
    return tried


def with_any(bad: set[str], how: str = "exit"):
    return lambda names, _tries: how if bad & set(names) else None


EIGHT = [MpiHost(f"h{i}", f"10.231.0.{10 + i}", 1) for i in range(1, 9)]


def statuses(results) -> dict[str, Status]:
    return {name: checks[0].status for name, checks in results.items()}


def test_a_host_whose_daemon_cannot_start_fails_alone_and_the_rest_pass(monkeypatch):
    tried = stand_in_mpirun(monkeypatch, with_any({"h6"}))
    results, measured = run_mpi(EIGHT, "eth0", CIDR, sys.executable, timeout_s=60)
    assert results["h6"][0].status is Status.FAIL
    assert results["h6"][0].detail == (
        "h6 failed alone with the launcher; the other 7 passed alone: mpirun exited with 1: "
        "ORTE was unable to reliably start one or more daemons")
    assert "ssh h6 orted --help" in results["h6"][0].remedy
    for name in (h.name for h in EIGHT if h.name != "h6"):
        assert results[name][0].status is Status.PASS, results[name]
        assert results[name][0].detail.endswith("checked without h6, which failed")
    # The group, each host alone, the rest together.
    assert tried[0] == [h.name for h in EIGHT] and len(tried) == 1 + 8 + 1
    assert tried[-1] == ["h1", "h2", "h3", "h4", "h5", "h7", "h8"]
    assert "h6" not in measured["ranks"]


def test_a_daemon_that_starts_and_hangs_is_confirmed_alone_then_condemned(monkeypatch):
    tried = stand_in_mpirun(monkeypatch, with_any({"h3"}, "hang"))
    results, _ = run_mpi(EIGHT, "eth0", CIDR, sys.executable, timeout_s=60)
    assert statuses(results) == {h.name: Status.FAIL if h.name == "h3" else Status.PASS
                                 for h in EIGHT}
    assert tried.count(["h3"]) == 2  # tried again alone before the verdict stands
    assert results["h3"][0].detail.startswith("h3 failed alone with the launcher twice")
    assert "hung for 10 s" in results["h3"][0].detail
    assert "orted" in results["h3"][0].remedy and "TMPDIR" in results["h3"][0].remedy


def test_a_host_that_times_out_only_in_the_crowd_warns_with_its_time(monkeypatch):
    def fails(names, tries):
        if names in ([h.name for h in EIGHT], ["h2"]) and tries == 0:
            return "hang"
        return None

    stand_in_mpirun(monkeypatch, fails)
    results, _ = run_mpi(EIGHT, "eth0", CIDR, sys.executable, timeout_s=60)
    assert statuses(results) == {h.name: Status.WARN if h.name == "h2" else Status.PASS
                                 for h in EIGHT}
    assert "passed only when tried again alone" in results["h2"][0].detail
    assert "1.5 s" in results["h2"][0].detail


def test_when_every_host_fails_alone_the_launcher_is_blamed(monkeypatch):
    stand_in_mpirun(monkeypatch, lambda names, tries: "hang")
    results, _ = run_mpi(EIGHT[:4], "eth0", CIDR, sys.executable, timeout_s=60)
    assert set(statuses(results).values()) == {Status.FAIL}
    assert results["h1"][0].detail.startswith("mpirun failed with each of the 4 hosts alone, "
                                              "so the fault is on this machine")


def test_a_host_others_cannot_reach_is_found_by_halving(monkeypatch):
    # h4 passes alone but fails with any other host: a firewall for incoming connections.
    tried = stand_in_mpirun(monkeypatch, lambda names, _: "hang" if "h4" in names
                            and len(names) > 1 else None)
    results, _ = run_mpi(EIGHT, "eth0", CIDR, sys.executable, timeout_s=60)
    assert statuses(results) == {h.name: Status.FAIL if h.name == "h4" else Status.PASS
                                 for h in EIGHT}
    assert "passed alone but failed together with" in results["h4"][0].detail
    assert len(tried) <= 1 + 8 + 1 + 2 * 3 + 2 + 1


def test_the_pairs_that_never_connected_are_tried_first_and_confirmed(monkeypatch):
    tried = stand_in_mpirun(monkeypatch, lambda names, _: ("cut", "h4") if "h4" in names
                            and len(names) > 1 else None)
    results, _ = run_mpi(EIGHT, "eth0", CIDR, sys.executable, timeout_s=60)
    assert statuses(results) == {h.name: Status.FAIL if h.name == "h4" else Status.PASS
                                 for h in EIGHT}
    # The group, 8 alone, together, the others with and without h4 (their own run is final).
    assert len(tried) == 1 + 8 + 1 + 2
    assert "failed together with h1, h2, h3, h5, h6, h7, h8, which pass together" in \
        results["h4"][0].detail


def test_a_bad_link_between_two_hosts_condemns_one_end_and_keeps_the_other(monkeypatch):
    stand_in_mpirun(monkeypatch, lambda names, _: "hang" if {"h2", "h7"} <= set(names)
                    else None)
    results, _ = run_mpi(EIGHT, "eth0", CIDR, sys.executable, timeout_s=60)
    failing = {n for n, s in statuses(results).items() if s is Status.FAIL}
    assert len(failing) == 1 and failing <= {"h2", "h7"}, statuses(results)


def test_two_bad_hosts_are_both_found(monkeypatch):
    stand_in_mpirun(monkeypatch, with_any({"h1", "h5"}))
    results, _ = run_mpi(EIGHT[:5], "eth0", CIDR, sys.executable, timeout_s=60)
    assert {n for n, c in results.items() if c[0].status is Status.FAIL} == {"h1", "h5"}


def test_a_group_that_fails_in_every_company_fails_everyone(monkeypatch):
    """No host explains it: every group of two or more fails, whoever is in it."""
    stand_in_mpirun(monkeypatch, lambda names, _: "exit" if len(names) > 1 else None)
    results, _ = run_mpi(HOSTS, "eth0", CIDR, sys.executable, timeout_s=60)
    assert all(c[0].status is Status.FAIL for c in results.values())


def test_bandwidth_rounds_that_outlast_the_budget_warn_instead_of_failing(monkeypatch):
    from preflight.active import mpi as active_mpi

    stand_in_mpirun(monkeypatch, lambda names, _: None)
    good_launch = active_mpi.launch

    def launch(hosts, cidr, python, bandwidth, *args, **kwargs):
        if bandwidth:
            return active_mpi.Attempt(tuple(hosts), tuple(h.name for h in hosts),
                                      a_run(**HUNG), ProbeOutput())
        return good_launch(hosts, cidr, python, bandwidth, *args, **kwargs)

    monkeypatch.setattr(active_mpi, "launch", launch)
    results, _ = run_mpi(HOSTS, "eth0", CIDR, sys.executable, bandwidth=True, timeout_s=60)
    assert [(c.id, c.status) for c in results["h1"]] == [
        ("mpi.allreduce", Status.PASS), ("mpi.latency", Status.PASS),
        ("mpi.bandwidth", Status.WARN)]
    assert "not measured" in results["h1"][2].detail


def test_the_headline_of_mpiruns_help_text_is_its_first_sentence():
    run = a_run(returncode=1, stderr=ORTE_FAILURE)
    detail, _ = explain_exit(run, ["h3"])
    assert detail == ("mpirun could not start its daemon on h3: ORTE was unable to reliably "
                      "start one or more daemons")


def test_a_ranks_own_error_beats_mpiruns_framing():
    text = ("[1,1]<stderr>:Traceback (most recent call last):\n"
            "[1,1]<stderr>:ImportError: libfoo.so: cannot open shared object file\n"
            + ORTE_FAILURE)
    detail, _ = explain_exit(a_run(returncode=1, stdout=text), ["h1", "h2"])
    assert detail.endswith("ImportError: libfoo.so: cannot open shared object file")


def test_mpirun_chatter_is_not_an_event():
    assert parse_event("[h1:123] mca_base_component_repository_open: unable to open") is None
    assert parse_event('{"event": "init", "rank": 1}') == {"event": "init", "rank": 1}


# --- real runs on this machine ------------------------------------------------------------------

def mpi_ready() -> bool:
    return shutil.which("mpirun") is not None and missing_tools(sys.executable) is None


needs_mpi = pytest.mark.skipif(not mpi_ready(), reason="needs mpirun and mpi4py (make setup)")


def test_without_the_venv_python_mpi_fails_with_make_setup():
    results, measured = run_mpi([MpiHost("localhost", "127.0.0.1", 1)], "lo", "127.0.0.0/8",
                                "/nonexistent/bin/python")
    check = results["localhost"][0]
    assert (check.id, check.status) == ("mpi.allreduce", Status.FAIL)
    assert "make setup" in check.remedy
    assert measured == {"latency_us": {}, "bandwidth_MBps": {}}


@needs_mpi
def test_one_rank_on_localhost_checks_the_allreduce_and_has_no_pairs():
    results, measured = run_mpi([MpiHost("localhost", "127.0.0.1", 1)], "lo", "127.0.0.0/8",
                                sys.executable, timeout_s=60)
    assert [(c.id, c.status) for c in results["localhost"]] == [
        ("mpi.allreduce", Status.PASS), ("mpi.latency", Status.SKIP)]
    assert measured["latency_us"] == {}


@needs_mpi
def test_two_ranks_on_localhost_measure_latency_and_bandwidth_over_tcp():
    results, measured = run_mpi([MpiHost("localhost", "127.0.0.1", 2)], "lo", "127.0.0.0/8",
                                sys.executable, bandwidth=True, timeout_s=60)
    assert [(c.id, c.status) for c in results["localhost"]] == [
        ("mpi.allreduce", Status.PASS), ("mpi.latency", Status.PASS),
        ("mpi.bandwidth", Status.PASS)]
    assert "2 ranks on localhost" in results["localhost"][0].detail
    assert measured["latency_us"]["localhost"]["localhost"] > 0
    assert measured["bandwidth_MBps"]["localhost"]["localhost"] > 0


@needs_mpi
def test_a_hanging_mpirun_is_killed_with_its_ranks_at_the_timeout():
    argv = ["mpirun", "--allow-run-as-root", "-np", "2", "-H", "localhost:2", "--mca", "pml",
            "ob1", "--mca", "btl", "self,tcp", sys.executable, "-c",
            "import time; print('started', flush=True); time.sleep(300)  # preflight-hang-test"]
    start = time.monotonic()
    run = proc.run(argv, timeout_s=2)
    assert run.timed_out
    assert time.monotonic() - start < 10
    assert eventually(lambda: subprocess.run(["pgrep", "-f", "preflight-hang-test"],
                                             capture_output=True).returncode == 1)


def test_a_child_that_left_the_process_group_is_stopped_too():
    """As mpirun's ssh clients do: in a group of their own, holding the output open."""
    stray = ("import os, time; os.setpgid(0, 0); time.sleep(300)  # preflight-stray-test")
    script = (f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {stray!r}])"
              f"\ntime.sleep(300)\n")
    start = time.monotonic()
    run = proc.run([sys.executable, "-c", script], timeout_s=2, hopeless=lambda _out: False)
    assert run.timed_out and time.monotonic() - start < 8
    assert eventually(lambda: subprocess.run(["pgrep", "-f", "preflight-stray-test"],
                                             capture_output=True).returncode == 1)


def test_a_run_that_reports_it_will_hang_is_stopped_early():
    script = ("import json, time\n"
              "print(json.dumps({'event': 'stuck', 'rank': 0, 'peer': 1}), flush=True)\n"
              "print(json.dumps({'event': 'done', 'rank': 1, 'peer': 0}), flush=True)\n"
              "time.sleep(300)\n")
    start = time.monotonic()
    run = proc.run([sys.executable, "-c", script], timeout_s=60, hopeless=will_hang(2))
    assert run.timed_out and run.gave_up
    assert time.monotonic() - start < 10
    assert parse_output(run.stdout).stuck == {(0, 1)}


def eventually(check, tries: int = 20, delay: float = 0.1) -> bool:
    for _ in range(tries):
        if check():
            return True
        time.sleep(delay)
    return False


def test_mpirun_gets_the_preflights_control_path_unless_a_space_would_split_it(tmp_path,
                                                                               monkeypatch):
    from preflight.remote import Ssh

    with Ssh() as ssh:
        args = ssh.reuse_args()
        assert args[:2] == ["-o", "ControlMaster=no"]
        assert args[3].startswith("ControlPath=") and args[3].endswith("/%C")
        assert not [a for a in args if " " in a]
    spaced = tmp_path / "with space"
    spaced.mkdir()
    monkeypatch.setenv("TMPDIR", str(spaced))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with Ssh() as ssh:
        assert ssh.reuse_args() == []
