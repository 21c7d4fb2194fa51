"""The scaling prediction (preflight.scaling) against hand-computed cases."""

from __future__ import annotations

import pytest

from preflight import scaling

HOSTS = ["h1", "h2", "h3", "h4"]


def matrices(mbps: float = 12.5, us: float = 100.0, slow: str | None = None,
             slow_mbps: float = 1.25) -> dict:
    """Every pair at mbps MB/s and us microseconds; the slow host's links at slow_mbps."""
    rate = {a: {b: (slow_mbps if slow in (a, b) else mbps) for b in HOSTS if b != a}
            for a in HOSTS}
    return {"bandwidth_MBps": rate,
            "latency_us": {a: {b: us for b in HOSTS if b != a} for a in HOSTS}}


WORK = scaling.Workload(compute_s=0.010, parameters=1_000_000, batch_per_rank=32)


def test_a_ring_allreduce_of_4_mb_over_100_mbit_by_hand() -> None:
    net = scaling.ring(HOSTS, matrices())
    assert net.bandwidth_Bps == 12.5e6 and net.latency_s == pytest.approx(100e-6)
    point = scaling.predict(net, WORK)
    # 2(P-1)/P x S/(eB) = 1.5 x 4e6 / (0.8 x 12.5e6) = 0.6 s; 2(P-1) x a = 6 x 100 us; + cycle
    assert scaling.RING_EFFICIENCY == 0.8
    comm = 0.6 + 6 * 100e-6 + scaling.HOROVOD_CYCLE_S
    assert point.comm_s == pytest.approx(comm)
    assert point.step_s == pytest.approx(0.010 + comm)
    assert point.samples_per_s == pytest.approx(4 * 32 / (0.010 + comm))
    assert point.efficiency == pytest.approx(0.010 / (0.010 + comm))


def test_sizes_are_shown_in_a_unit_that_keeps_their_figures() -> None:
    assert [scaling.size_text(n) for n in (612, 2_400, 31_512_000, 1.2e9)] == [
        "612 B", "2.4 kB", "31.5 MB", "1.2 GB"]


def test_fp16_halves_the_bytes_and_accumulation_divides_the_allreduces() -> None:
    net = scaling.ring(HOSTS, matrices())
    fp16 = scaling.predict(net, scaling.Workload(0.010, 1_000_000, 32, fp16=True))
    assert fp16.comm_s == pytest.approx(0.3 + 6 * 100e-6 + scaling.HOROVOD_CYCLE_S)
    four = scaling.predict(net, scaling.Workload(0.010, 1_000_000, 32, accumulate=4))
    assert four.comm_s == pytest.approx(scaling.predict(net, WORK).comm_s / 4)


def test_one_host_talks_over_no_network_and_scales_perfectly() -> None:
    (one, two, *_rest) = scaling.curve(HOSTS, matrices(), WORK)
    assert (one.hosts, one.comm_s, one.efficiency) == (1, 0.0, 1.0)
    # Two ranks: 2(2-1)/2 x 4e6 / (0.8 x 12.5e6) = 0.4 s, plus 2 latencies and the cycle.
    assert two.comm_s == pytest.approx(0.4 + 2 * 100e-6 + scaling.HOROVOD_CYCLE_S)


def test_the_slowest_link_of_the_ring_decides_and_its_host_is_named_to_leave_out() -> None:
    m = matrices(slow="h3")
    net = scaling.ring(HOSTS, m)
    assert net.bandwidth_Bps == 1.25e6 and "h3" in net.slowest
    tips = scaling.advice(net, WORK, m)
    assert tips[0] == "communication is 100% of the step"  # 4.8 s against 10 ms
    (leave,) = [t for t in tips if t.startswith("leave out")]
    assert leave.startswith("leave out h3 ")
    assert any(t.startswith("FP16=1") and "2.00x" in t for t in tips)  # 6.01 s / 3.01 s


def test_no_advice_when_compute_dominates_and_no_bandwidth_says_how_to_measure() -> None:
    fast = scaling.ring(HOSTS, matrices(mbps=10_000))
    assert scaling.advice(fast, scaling.Workload(1.0, 1_000_000, 32), matrices()) == []
    latency_only = {"latency_us": matrices()["latency_us"]}
    net = scaling.ring(HOSTS, latency_only)
    assert net.bandwidth_Bps is None
    assert "BANDWIDTH=1" in scaling.summary(net, WORK)


def test_without_bandwidth_the_chosen_networks_bursts_stand_for_every_link() -> None:
    """Where the preflight raced networks, the chosen one's slowest burst is the ring's link;
    the MPI matrix, where measured, still wins."""
    bursts = {"network_MBps": {"h1": {"h2": 1100.0}, "h3": {"h4": 900.0}},
              "latency_us": {"h1": {"h2": 50.0}}}
    net = scaling.ring(["h1", "h2", "h3", "h4"], bursts)
    assert net.bandwidth_Bps == 900e6 and net.slowest == ("h3", "h4")
    both = {**bursts, "bandwidth_MBps": {"h1": {"h2": 11.0}, "h2": {"h1": 12.0}}}
    assert scaling.ring(["h1", "h2"], both).bandwidth_Bps == 11e6
