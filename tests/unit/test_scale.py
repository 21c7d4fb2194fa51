"""What keeps the preflight's cost bounded at scale: the pair schedule beyond ALL_PAIRS_UP_TO
hosts, the second round's companies, the probe window."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from preflight import fanout
from preflight.active.mesh import companions, confirm_partners, sampled_partners
from preflight.agents.mpi_probe import ALL_PAIRS_UP_TO, MATCHINGS, partners, schedule
from preflight.checks.mesh import MeshHost


def hosts(n: int) -> list[MeshHost]:
    return [MeshHost(f"h{i}", f"10.0.0.{i}", "eth0", 1500) for i in range(1, n + 1)]


@pytest.mark.parametrize("n", [17, 18, 33, 100, 101, 1000])
def test_beyond_the_threshold_rounds_stay_few_and_pairs_never_repeat(n):
    rounds = schedule(n, seed=11)
    assert len(rounds) <= 3 + MATCHINGS  # the ring's 2-3 rounds and the matchings
    pairs = [frozenset(p) for r in rounds for p in r]
    assert len(pairs) == len(set(pairs))
    for r in rounds:
        ranks = [x for p in r for x in p]
        assert len(ranks) == len(set(ranks))  # disjoint: each rank once per round
    ring = {frozenset((i, (i + 1) % n)) for i in range(n)}
    assert ring <= set(pairs)  # the links a ring allreduce uses are all measured
    degrees = [len(p) for p in partners(n, seed=11)]
    assert min(degrees) >= 2 + MATCHINGS - 3 and max(degrees) <= 2 + MATCHINGS


def test_up_to_the_threshold_every_pair_is_measured_and_the_seed_changes_the_sample():
    n = ALL_PAIRS_UP_TO
    assert all(len(p) == n - 1 for p in partners(n, seed=1))
    assert schedule(100, seed=1) == schedule(100, seed=1)
    assert schedule(100, seed=1) != schedule(100, seed=2)


def test_every_mesh_host_is_probed_by_its_partners_both_ways():
    names = [h.name for h in hosts(40)]
    pairs = sampled_partners(names, seed=3)
    assert all(a in pairs[b] for a in names for b in pairs[a])


def test_many_suspects_are_spread_over_the_hosts_that_passed_and_a_bad_link_is_seen_again():
    crowd = hosts(60)
    suspects, passing = crowd[:12], crowd[12:]
    companies = {h.name: companions(k, passing, len(crowd)) for k, h in enumerate(suspects)}
    used = [c.name for company in companies.values() for c in company]
    assert len(set(used)) == len(used) == 12 * 3  # nobody in two companies while there is room
    again = [*suspects, *{c for company in companies.values() for c in company}]
    pairs = confirm_partners(again, companies, {frozenset(("h1", "h2"))})
    assert "h2" in pairs["h1"] and "h3" not in pairs["h1"]
    assert {c.name for c in companies["h1"]} <= pairs["h1"]


def test_the_window_grows_on_quick_answers_and_shrinks_on_slow_ones():
    window = fanout.Window(timeout_s=10, largest=100)
    for _ in range(40):
        window.answered(0.2)
    assert window.size > fanout.START
    grown = window.size
    for _ in range(40):
        window.answered(4.0)
    assert window.size < grown
    assert window.size >= fanout.SMALLEST


def test_a_host_waiting_for_a_place_in_the_window_is_not_timed_yet():
    window = fanout.Window(timeout_s=0.3, largest=4)  # 0.05 s answers: neither grow nor shrink
    window.size = 2
    busy, peak = [0], [0]
    lock = threading.Lock()

    def attempt(name: str) -> float:
        with lock:
            busy[0] += 1
            peak[0] = max(peak[0], busy[0])
        time.sleep(0.05)
        with lock:
            busy[0] -= 1
        return 0.05

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures, started = fanout.start_all([f"h{i}" for i in range(8)], attempt, window, pool,
                                            lambda seconds: seconds)
        assert all(f.result() == 0.05 for f in futures.values())
    assert peak[0] <= 2
    order = sorted(started.values())
    assert order[-1] - order[0] >= 0.15  # the last ones started later, each with its own clock
