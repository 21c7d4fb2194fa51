"""How fast a model will train on these hosts: the preflight's measured links and the model's
gradient size give the ring-allreduce time per step; the compute time per step gives the step
time, throughput and scaling efficiency for 1..N hosts, and the knobs that recover it.

The model (Horovod's ring allreduce, as in its docs and Patarasuk & Yuan): each of P ranks sends
and receives 2(P-1)/P of the gradient bytes S in 2(P-1) steps, so one allreduce takes

    t = 2(P-1)/P * S / (e B)  +  2(P-1) * a  +  c

with B the bandwidth of the slowest link in the ring (bytes/s, per direction, as the preflight's
MPI probe measures it one way at a time), e the share of it the ring gets (RING_EFFICIENCY), a
its one-way latency, and c Horovod's own cost per fused allreduce (its negotiation cycle).
make train runs Open MPI's ring allreduce (preflight.launch.command.RING_ALLREDUCE). Gradients are
4 bytes per parameter, 2 with fp16 compression; with accumulation over k batches one allreduce
serves k steps. The step time is compute + allreduce (no overlap assumed: on the slow links
where the prediction matters, Horovod's fused allreduce runs mostly after the backward pass).

Pure functions of numbers and the preflight report: no TensorFlow, no processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

HOROVOD_CYCLE_S = 0.002  # measured here: ~2.2 ms per small Horovod allreduce (its cycle)
# The share of the preflight's one-way MPI rate that the ring gets: its chunks go both ways on
# every link at once, after an idle gap (TCP restarts slowly). Measured on links throttled to
# 100 Mbit/s, Open MPI's ring: 0.73-0.83 on 2, 3, 4 hosts.
RING_EFFICIENCY = 0.8
COMM_DOMINATES = 0.5  # above this share of the step, the advice is printed


@dataclass(frozen=True)
class Ring:
    """The hosts in ring order (the hostfile's) and the links that bound the ring."""

    hosts: tuple[str, ...]
    bandwidth_Bps: float | None  # the slowest link of the ring, per direction; None: one host
    latency_s: float  # the highest one-way latency of the ring's links
    slowest: tuple[str, str] | None  # the pair with the lowest bandwidth (or highest latency)


@dataclass(frozen=True)
class Workload:
    """One rank's step: its compute time and the gradient it allreduces."""

    compute_s: float
    parameters: int
    batch_per_rank: int
    ranks_per_host: int = 1
    fp16: bool = False
    accumulate: int = 1

    @property
    def gradient_bytes(self) -> int:
        return self.parameters * (2 if self.fp16 else 4)


@dataclass(frozen=True)
class Point:
    hosts: int
    ranks: int
    step_s: float
    comm_s: float  # per step (an allreduce every `accumulate` steps)
    samples_per_s: float
    efficiency: float  # against the ranks x one rank's throughput

    @property
    def comm_share(self) -> float:
        return self.comm_s / self.step_s if self.step_s else 0.0


def ring(hosts: Sequence[str], matrices: Mapping) -> Ring:
    """The ring over hosts (in this order) from preflight.json's matrices: bandwidth_MBps
    {a: {b: MB/s from a to b}} (with --bandwidth) and latency_us {a: {b: us}}; without
    bandwidth_MBps, the slowest pair of network_MBps (the bursts on the chosen network, where
    several were raced) stands for every link."""
    pairs = [(hosts[i], hosts[(i + 1) % len(hosts)]) for i in range(len(hosts))] \
        if len(hosts) > 1 else []
    rates = matrices.get("bandwidth_MBps") or {}
    latencies = matrices.get("latency_us") or {}
    # Each link by its slower direction; a link measured one way only counts that way.
    measured = [(min(both), (a, b)) for a, b in pairs
                if (both := [v for v in (value(rates, a, b), value(rates, b, a)) if v])]
    delays = [(value(latencies, a, b) or value(latencies, b, a) or 0.0, (a, b))
              for a, b in pairs]
    if not pairs:
        return Ring(tuple(hosts), None, 0.0, None)
    if not measured:
        worst = max(delays)
        burst = [(float(v), (a, b)) for a, row in (matrices.get("network_MBps") or {}).items()
                 for b, v in row.items() if v]
        if burst:  # a few pairs measured: the slowest of them for every link
            return Ring(tuple(hosts), min(burst)[0] * 1e6, worst[0] * 1e-6, min(burst)[1])
        return Ring(tuple(hosts), None, worst[0] * 1e-6, worst[1])  # latency only
    slowest = min(measured)
    return Ring(tuple(hosts), slowest[0] * 1e6, max(delays)[0] * 1e-6, slowest[1])


def value(matrix: Mapping, a: str, b: str) -> float | None:
    found = matrix.get(a, {}).get(b)
    return None if found is None else float(found)


def allreduce_s(ranks: int, gradient_bytes: int, net: Ring) -> float:
    """One ring allreduce of gradient_bytes over `ranks` ranks (0 for one rank)."""
    if ranks <= 1:
        return 0.0
    share = 2 * (ranks - 1) / ranks
    rate = (net.bandwidth_Bps or 0.0) * RING_EFFICIENCY
    transfer = share * gradient_bytes / rate if rate else 0.0
    return transfer + 2 * (ranks - 1) * net.latency_s + HOROVOD_CYCLE_S


def predict(net: Ring, work: Workload) -> Point:
    """Step time, throughput and efficiency on the ring's hosts."""
    hosts = len(net.hosts)
    ranks = hosts * work.ranks_per_host
    comm = allreduce_s(ranks, work.gradient_bytes, net) / work.accumulate
    step = work.compute_s + comm
    rate = ranks * work.batch_per_rank / step
    one = work.batch_per_rank / work.compute_s
    return Point(hosts, ranks, step, comm, rate, rate / (ranks * one))


def curve(hosts: Sequence[str], matrices: Mapping, work: Workload) -> list[Point]:
    """The prediction on the first 1, 2, ... N hosts, each ring bound by its own links."""
    return [predict(ring(hosts[:n], matrices), work) for n in range(1, len(hosts) + 1)]


def advice(net: Ring, work: Workload, matrices: Mapping) -> list[str]:
    """What to change when communication dominates, each with the predicted effect."""
    now = predict(net, work)
    if now.comm_share < COMM_DOMINATES or net.bandwidth_Bps is None:
        return []
    tips = [f"communication is {now.comm_share:.0%} of the step"]
    for text, changed in (
            ("FP16=1 (half the gradient bytes)", replace(work, fp16=True)),
            (f"ACCUMULATE={4 * work.accumulate} (one allreduce per {4 * work.accumulate} "
             "batches)", replace(work, accumulate=4 * work.accumulate)),
            (f"BATCH_SIZE={4 * work.batch_per_rank} (4x the samples per allreduce; adjust LR)",
             replace(work, batch_per_rank=4 * work.batch_per_rank,
                     compute_s=4 * work.compute_s))):
        if not work.fp16 or "FP16" not in text:
            better = predict(net, changed)
            tips.append(f"{text}: {better.step_s * 1e3:.0f} ms/step, "
                        f"{better.samples_per_s / now.samples_per_s:.2f}x the samples/s")
    tips += leave_out(net, work, matrices, now)
    tips.append("HOROVOD_FUSION_THRESHOLD/HOROVOD_CYCLE_TIME: larger fused buffers and a longer "
                "cycle help many small gradients, not one large transfer on a slow link")
    return tips


def leave_out(net: Ring, work: Workload, matrices: Mapping, now: Point) -> list[str]:
    """The host whose removal makes the ring fastest, if that beats keeping it."""
    best = None
    for host in net.hosts:
        rest = [h for h in net.hosts if h != host]
        point = predict(ring(rest, matrices), work)
        if best is None or point.samples_per_s > best[1].samples_per_s:
            best = (host, point)
    if best is None or best[1].samples_per_s <= now.samples_per_s * 1.05:
        return []
    host, point = best
    return [f"leave out {host} (on the slowest link {'-'.join(net.slowest or ())}): "
            f"{point.hosts} hosts at {point.samples_per_s:,.0f} samples/s, "
            f"{point.samples_per_s / now.samples_per_s:.2f}x"]


def size_text(n_bytes: float) -> str:
    """Bytes in the unit that keeps three figures: 612 B, 2.4 kB, 31.5 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def summary(net: Ring, work: Workload) -> str:
    """One line: the prediction for all the ring's hosts."""
    point = predict(net, work)
    if net.bandwidth_Bps is None and len(net.hosts) > 1:
        return ("prediction: the preflight measured no bandwidth (make train BANDWIDTH=1, or "
                "make preflight PREFLIGHT_ARGS=--bandwidth)")
    link = (f"at {net.bandwidth_Bps / 1e6:,.1f} MB/s on {'-'.join(net.slowest or ())}"
            if net.bandwidth_Bps else "within one host")
    return (f"prediction on {point.hosts} host(s), {point.ranks} rank(s): "
            f"{point.step_s * 1e3:.1f} ms/step (compute {work.compute_s * 1e3:.1f} ms, allreduce "
            f"{point.comm_s * 1e3:.1f} ms of {size_text(work.gradient_bytes)} {link}), "
            f"{point.samples_per_s:,.0f} samples/s, scaling efficiency {point.efficiency:.0%}")
