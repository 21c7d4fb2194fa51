"""mpi.*: the pair schedule, the mpirun command, mapping results to hosts, and real local runs."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time

import pytest
from preflight.checks.mpi import (
    MpiHost,
    MpirunRun,
    explain_exit,
    launch_failure,
    map_results,
    missing_tools,
    mpirun_argv,
    parse_event,
    rank_layout,
    run_bounded,
    run_mpi,
)
from preflight.mpi_probe import partner, round_robin
from preflight.result import Status

HOSTS = [MpiHost(f"h{i}", f"10.231.0.{10 + i}", 2) for i in (1, 2, 3)]
LAYOUT = ["h1", "h2", "h3"]
CIDR = "10.231.0.0/24"


def a_run(**kwargs) -> MpirunRun:
    fields = {"argv": ("mpirun",), "returncode": 0, "stdout": "", "stderr": "", "seconds": 1.5}
    return MpirunRun(**{**fields, **kwargs})


def a_result(latency=None, bandwidth=None, ok=True) -> dict:
    return {"event": "result", "size": 3, "hosts": LAYOUT,
            "allreduce": {"ok": ok, "sum_of_ranks": 3 if ok else 4, "expected": 3,
                          "array_ok": ok, "array_len": 4096},
            "latency_us": latency if latency is not None else [[0, 1, 40.0], [0, 2, 50.0],
                                                               [1, 2, 45.0]],
            "bandwidth_MBps": bandwidth or [], "library": "Open MPI v4.1.4\x00"}


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
    assert "--allow-run-as-root" not in argv
    assert argv[argv.index("/venv/bin/python") + 1] == "-c"
    assert "--bandwidth" not in argv


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
    results, measured = map_results(HOSTS, LAYOUT, a_result(), a_run(), "eth0", False)
    assert {h: [c.status for c in cs] for h, cs in results.items()} == {
        h: [Status.PASS, Status.PASS] for h in LAYOUT}
    assert "allreduce over 3 ranks on h1, h2, h3 checked" in results["h1"][0].detail
    assert measured["latency_us"] == {"h1": {"h2": 40.0, "h3": 50.0},
                                      "h2": {"h1": 40.0, "h3": 45.0},
                                      "h3": {"h1": 50.0, "h2": 45.0}}
    assert measured["library"] == "Open MPI v4.1.4"


def test_a_wrong_allreduce_fails_with_a_remedy():
    results, _ = map_results(HOSTS, LAYOUT, a_result(ok=False), a_run(), "eth0", False)
    assert results["h2"][0].status is Status.FAIL
    assert "wrong values" in results["h2"][0].detail


def test_latency_far_above_the_median_warns_only_the_slow_host():
    hosts = [*HOSTS, MpiHost("h4", "10.231.0.14", 1)]
    layout = [*LAYOUT, "h4"]
    latency = [[0, 1, 40.0], [0, 2, 4000.0], [0, 3, 42.0], [1, 2, 3900.0], [1, 3, 41.0],
               [2, 3, 4100.0]]
    results, _ = map_results(hosts, layout, a_result(latency=latency), a_run(), "eth0", False)
    assert {h: cs[1].status for h, cs in results.items()} == {
        "h1": Status.PASS, "h2": Status.PASS, "h3": Status.WARN, "h4": Status.PASS}
    assert "ping -c 100 h3" in results["h3"][1].remedy


def test_bandwidth_is_kept_per_direction_for_every_pair():
    bandwidth = [[a, b, 1000.0 + 10 * a + b] for a in range(3) for b in range(3) if a != b]
    results, measured = map_results(HOSTS, LAYOUT, a_result(bandwidth=bandwidth), a_run(),
                                    "eth0", True)
    assert measured["bandwidth_MBps"]["h1"] == {"h2": 1001.0, "h3": 1002.0}
    assert measured["bandwidth_MBps"]["h3"] == {"h1": 1020.0, "h2": 1021.0}
    assert [c.id for c in results["h1"]] == ["mpi.allreduce", "mpi.latency", "mpi.bandwidth"]
    assert results["h1"][2].status is Status.PASS


def test_a_hang_after_every_rank_started_fails_everyone_naming_the_firewall():
    events = [{"event": "init", "rank": r, "host": h} for r, h in enumerate(LAYOUT)]
    results = launch_failure(HOSTS, LAYOUT, a_run(returncode=-15, timed_out=True, seconds=15.2),
                             events, "eth0", CIDR)
    assert {h: cs[0].status for h, cs in results.items()} == {h: Status.FAIL for h in LAYOUT}
    assert results["h1"][0].detail.startswith("mpirun hung for 15s: the allreduce over h1, h2, "
                                              "h3 never finished")
    assert "firewall" in results["h1"][0].remedy and "eth0" in results["h1"][0].remedy


def test_a_hang_where_a_host_never_started_says_which():
    events = [{"event": "init", "rank": 0, "host": "h1"}, {"event": "init", "rank": 2}]
    results = launch_failure(HOSTS, LAYOUT, a_run(returncode=-9, timed_out=True, seconds=15),
                             events, "eth0", CIDR)
    assert "no rank ever started on h2" in results["h2"][0].detail
    assert "ranks started only on h1, h3" in results["h1"][0].detail


def test_a_missing_mpi4py_on_a_host_asks_for_make_setup():
    run = a_run(returncode=1, stderr="ModuleNotFoundError: No module named 'mpi4py'\n")
    detail, remedy = explain_exit(run)
    assert "mpi4py" in detail and "make setup" in remedy


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
    run = run_bounded(argv, timeout_s=2)
    assert run.timed_out
    assert time.monotonic() - start < 10
    assert eventually(lambda: subprocess.run(["pgrep", "-f", "preflight-hang-test"],
                                             capture_output=True).returncode == 1)


def eventually(check, tries: int = 20, delay: float = 0.1) -> bool:
    for _ in range(tries):
        if check():
            return True
        time.sleep(delay)
    return False
