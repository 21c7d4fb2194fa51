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
    launch_failure,
    map_results,
    measurements,
    parse_output,
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


def hung(done: list[dict], attempts: list[tuple[int, int]], started=(0, 1, 2),
         stuck: list[tuple[int, int]] = (), cut: list[tuple[int, int]] = ()) -> dict:
    out = ProbeOutput(started=frozenset(started), attempts=frozenset(attempts),
                      stuck=frozenset(stuck), cut=frozenset(cut), pairs=tuple(done))
    run = a_run(returncode=-15, stopped="timeout", seconds=17.2, limit_s=15)
    return launch_failure(HOSTS, LAYOUT, run, out, "eth0", CIDR)


def test_a_firewall_on_h2_hangs_its_pair_and_only_h2_fails():
    # Rounds for three ranks: h2-h3 (h2 opens), h1-h3 (h3 opens), h1-h2 (h1 opens: blocked).
    results = hung([pair(1, 2, 45.0), pair(2, 0, 50.0)],
                   [(1, 2), (2, 1), (0, 2), (2, 0), (0, 1), (1, 0)])
    assert {h: cs[0].status for h, cs in results.items()} == {
        "h1": Status.WARN, "h2": Status.FAIL, "h3": Status.WARN}
    assert results["h2"][0].detail == ("mpirun hung for 15s: MPI's TCP connections to h2 from "
                                       "h1 never completed")
    assert "firewall" in results["h2"][0].remedy and "eth0" in results["h2"][0].remedy
    assert "MPI from h1 to h3 works" in results["h1"][0].detail


def test_pairs_only_waiting_behind_a_blocked_one_are_not_blamed():
    # h3 drops incoming: h2 -> h3 blocks in round one, so h3 never turns to h1 in round two.
    results = hung([], [(1, 2), (2, 1), (0, 2)])
    assert results["h3"][0].status is Status.FAIL
    assert "to h3 from h2" in results["h3"][0].detail
    # h1 and h2 never got to each other: nothing shows that they work together.
    assert "held up before it could reach h2" in results["h1"][0].detail
    assert "held up before it could reach h1" in results["h2"][0].detail
    assert "MPI's TCP connections" not in results["h1"][0].detail


def test_a_pair_given_up_as_stuck_is_blamed_and_the_others_still_count():
    # h3 drops incoming: h2 -> h3 is given up by both, h3 -> h1 and h1 -> h2 go on and work.
    results = hung([pair(2, 0, 50.0), pair(0, 1, 40.0)],
                   [(1, 2), (2, 1), (0, 2), (2, 0), (0, 1), (1, 0)], stuck=[(1, 2), (2, 1)],
                   cut=[(1, 2)])
    assert {h: cs[0].status for h, cs in results.items()} == {
        "h1": Status.WARN, "h2": Status.WARN, "h3": Status.FAIL}
    assert "MPI's TCP connections to h3 from h2 never completed" in results["h3"][0].detail
    assert "MPI from h2 to h1 works" in results["h2"][0].detail


def test_only_pairs_whose_first_message_never_went_are_blamed_when_known():
    # h1 gave up waiting for h3 (h3 was late), but only h2 -> h3 never got through.
    results = hung([pair(0, 1, 40.0)], [(1, 2), (2, 1), (0, 2), (0, 1), (1, 0)],
                   stuck=[(1, 2), (2, 1), (0, 2)], cut=[(1, 2)])
    assert results["h3"][0].detail.endswith("MPI's TCP connections to h3 from h2 never "
                                            "completed")


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


def test_a_hang_with_no_pair_to_blame_fails_everyone():
    results = hung([], [])
    assert {h: cs[0].status for h, cs in results.items()} == {h: Status.FAIL for h in LAYOUT}
    assert results["h1"][0].detail.startswith("mpirun hung for 15s")


def test_a_hang_where_a_host_never_started_says_which():
    results = hung([], [], started=(0, 2))
    assert "no rank ever started on h2" in results["h2"][0].detail
    assert "waiting for h2 to start" in results["h1"][0].detail


def test_a_hang_before_any_rank_started_points_at_this_machine():
    results = hung([], [], started=())
    assert {h: cs[0].status for h, cs in results.items()} == {h: Status.FAIL for h in LAYOUT}
    assert "before any rank started" in results["h2"][0].detail
    assert "on this machine" in results["h2"][0].remedy


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


def stand_in_mpirun(monkeypatch, bad: set[str]) -> list[list[str]]:
    """active.mpi.launch replaced: a group with a bad host exits like mpirun does when a daemon
    cannot start; any other group gets a good result. Returns the groups tried, in order."""
    from preflight.active import mpi as active_mpi

    tried: list[list[str]] = []

    def launch(hosts, cidr, python, bandwidth, ssh_args, deadline):
        names = [h.name for h in hosts]
        tried.append(names)
        if bad & set(names):
            return active_mpi.Attempt(tuple(hosts), tuple(names),
                                      a_run(returncode=1, stderr=ORTE_FAILURE), ProbeOutput())
        n = len(names)
        pairs = [pair(a, b, 40.0) for a, b in itertools.combinations(range(n), 2)]
        good = output(pairs, n=n)
        good = ProbeOutput(started=good.started, attempts=good.attempts, left=good.left,
                           pairs=good.pairs, result={**good.result, "hosts": names})
        return active_mpi.Attempt(tuple(hosts), tuple(names), a_run(), good)

    monkeypatch.setattr(active_mpi, "launch", launch)
    monkeypatch.setattr(active_mpi, "missing_tools", lambda python: None)
    return tried


def test_a_host_whose_daemon_cannot_start_fails_alone_and_the_rest_pass(monkeypatch):
    hosts = [MpiHost(f"h{i}", f"10.231.0.{10 + i}", 1) for i in range(1, 9)]
    tried = stand_in_mpirun(monkeypatch, bad={"h6"})
    results, measured = run_mpi(hosts, "eth0", CIDR, sys.executable, timeout_s=60)
    assert results["h6"][0].status is Status.FAIL
    assert results["h6"][0].detail == ("mpirun could not start its daemon on h6: ORTE was "
                                       "unable to reliably start one or more daemons")
    assert "ssh h6 orted --help" in results["h6"][0].remedy
    for name in (h.name for h in hosts if h.name != "h6"):
        assert results[name][0].status is Status.PASS, results[name]
        assert results[name][0].detail.endswith("checked without h6, which failed")
    assert tried[0] == [f"h{i}" for i in range(1, 9)] and tried[-1] == [
        "h1", "h2", "h3", "h4", "h5", "h7", "h8"]
    assert len(tried) <= 1 + 2 * 3 + 1  # the group, two halves per level, the rerun
    assert "h6" not in measured["ranks"]


def test_two_bad_hosts_are_both_found(monkeypatch):
    hosts = [MpiHost(f"h{i}", f"10.231.0.{10 + i}", 1) for i in range(1, 6)]
    stand_in_mpirun(monkeypatch, bad={"h1", "h5"})
    results, _ = run_mpi(hosts, "eth0", CIDR, sys.executable, timeout_s=60)
    assert {n for n, c in results.items() if c[0].status is Status.FAIL} == {"h1", "h5"}


def test_a_group_that_fails_while_every_host_passes_alone_fails_as_before(monkeypatch):
    """Nobody to blame on their own: the group's own verdict stands for every host."""
    from preflight.active import mpi as active_mpi

    stand_in_mpirun(monkeypatch, bad=set())
    good_launch = active_mpi.launch

    def launch(hosts, *args):
        if len(hosts) == 3:
            return active_mpi.Attempt(tuple(hosts), tuple(h.name for h in hosts),
                                      a_run(returncode=1, stderr="boom\n"), ProbeOutput())
        return good_launch(hosts, *args)

    monkeypatch.setattr(active_mpi, "launch", launch)
    results, _ = run_mpi(HOSTS, "eth0", CIDR, sys.executable, timeout_s=60)
    assert all(c[0].status is Status.FAIL for c in results.values())
    assert results["h1"][0].detail == "mpirun over h1, h2, h3 exited with 1: boom"


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
