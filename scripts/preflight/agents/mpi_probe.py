"""The MPI probe: one rank per host under mpirun, the same transport the training job will use.

Run by active/mpi.py as `mpirun ... python -c <this file> [--bandwidth]`, so it needs nothing on
the hosts but the venv's Python with mpi4py. It prints JSON lines:

  {"event": "init", "rank", "host"}         every rank, as soon as MPI is up
  {"event": "start", "rank", "peer"}         every rank, as it turns to a pair
  {"event": "done" | "stuck", "rank", "peer"}  every rank, as it leaves the pair; "stuck" also
                                            has "opening" and the "phase" ("meet", "measure")
  {"event": "pair", "a", "b", "latency_us", "MBps": {"a_b", "b_a"}}
                                            the rank that opened the pair's connection (a), when
                                            that pair is done
  {"event": "result", "hosts", "allreduce", ...}   rank 0, at the end

Pairs come first, in rounds of disjoint pairs (a round-robin tournament: n - 1 rounds for an even
n, n for an odd n; beyond ALL_PAIRS_UP_TO ranks a ring and random matchings, see schedule()),
and in each pair a fixed side opens the TCP connection, chosen so that every host has
connections opened towards it (h1 -> h2, h2 -> h3, h3 -> h1 for three). Open MPI opens a
connection the first time a rank sends to a peer and reuses it both ways after, so without this a
host that drops incoming connections can pass or hang depending on who happened to send first.
A firewall shows as a pair whose first message never gets through: the rank that opens the pair
gives it up after --pair-wait-s ("stuck" in the "meet" phase) and goes on with its other pairs,
on a schedule every rank keeps (see Clock), so one bad host does not stop the others from being
measured.
Then the allreduce, checked: the sum of the ranks, and of a float array.

Standard library and mpi4py only; mpi4py is imported in main() so tests can import the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import time
from array import array

ARRAY_LEN = 4096
PINGS = 20
WARMUP = 3
BURSTS = 3  # bandwidth bursts after the first, small one
BURST_MESSAGES = 2
SIZING_BYTES = 256 * 1024  # the first burst's messages: 40 ms each at 50 Mbit/s
TAG = 7
NAP_S = 0.0005
SPIN_S = 0.002  # a ping-pong's wait spins this long, then naps: see finish()
SKEW_S = 0.5  # how far apart ranks may start (MPI_Init ends together); the waiting side waits
LATENCY_SLOT_S = 0.5  # what a round's slot keeps for timing the pair, beyond the meeting
BANDWIDTH_SLOT_S = 4.0
# Every pair is measured up to this many ranks (15 partners each); beyond, each rank meets the
# ring's 2 and MATCHINGS random others: 8, so all pairs would cost twice the sample and more.
ALL_PAIRS_UP_TO = 16
MATCHINGS = 6
LEFT_BEHIND: list = []  # requests given up on, kept so that their buffers stay alive


def round_robin(n: int) -> list[list[tuple[int, int]]]:
    """Rounds of disjoint pairs that together hold every pair of 0..n-1 exactly once.

    The circle method: fix player 0, rotate the others one step per round; with an odd n a
    dummy player makes the count even and whoever meets it sits the round out.
    """
    players: list[int | None] = list(range(n))
    if n % 2:
        players.append(None)
    m = len(players)
    rounds = []
    for _ in range(m - 1):
        pairs = []
        for i in range(m // 2):
            a, b = players[i], players[m - 1 - i]
            if a is not None and b is not None:
                pairs.append((min(a, b), max(a, b)))
        rounds.append(sorted(pairs))
        players = [players[0], players[-1], *players[1:-1]]
    return [r for r in rounds if r]


def schedule(n: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    """The pair rounds of n ranks: every pair (round_robin) up to ALL_PAIRS_UP_TO ranks; beyond,
    rounds whose number does not grow with n: the ring (i, i + 1) that a ring allreduce uses,
    in 2 rounds (3 for an odd n), then MATCHINGS rounds of the round-robin tournament of the
    ranks shuffled by `seed` (the same on every rank): perfect matchings that never repeat a
    pair, less the few ring pairs they hold. Every rank meets about 2 + MATCHINGS others, and
    each pair is measured in both directions."""
    if n <= ALL_PAIRS_UP_TO:
        return round_robin(n)
    ring = [(i, (i + 1) % n) for i in range(n)]
    colour = [2 if n % 2 and i == n - 1 else i % 2 for i in range(n)]
    rounds = [sorted((min(p), max(p)) for p, c in zip(ring, colour) if c == k) for k in range(3)]
    in_ring = {frozenset(p) for p in ring}
    rng = random.Random(seed)
    label = list(range(n))
    rng.shuffle(label)
    players = n + n % 2  # with a dummy player for an odd n, as in round_robin
    for index in rng.sample(range(players - 1), MATCHINGS):
        pairs = [(label[a], label[b]) for a, b in circle_round(players, index) if max(a, b) < n]
        rounds.append(sorted((min(p), max(p)) for p in pairs if frozenset(p) not in in_ring))
    return [r for r in rounds if r]


def circle_round(players: int, index: int) -> list[tuple[int, int]]:
    """Round `index` of the circle method over an even number of players, on its own:
    player 0 stays, the others turn `index` steps."""
    turned = [0, *((j - 1 - index) % (players - 1) + 1 for j in range(1, players))]
    return [(turned[i], turned[players - 1 - i]) for i in range(players // 2)]


def partners(n: int, seed: int = 0) -> list[set[int]]:
    """Each rank's partners in schedule(n, seed)."""
    every: list[set[int]] = [set() for _ in range(n)]
    for round_pairs in schedule(n, seed):
        for a, b in round_pairs:
            every[a].add(b)
            every[b].add(a)
    return every


def partner(round_pairs: list[tuple[int, int]], rank: int) -> int | None:
    for a, b in round_pairs:
        if rank in (a, b):
            return b if rank == a else a
    return None


def opener(a: int, b: int, n: int) -> int:
    """Which rank of the pair opens the connection: the one the other is at most n // 2 steps
    ahead of, around the circle. With three or more ranks every rank gets one opened to it."""
    low, high = min(a, b), max(a, b)
    return low if high - low <= n // 2 else high


class Stuck(Exception):
    """A pair operation did not finish in time: the pair is given up and the rank moves on."""


def finish(request, deadline: float, spin_s: float | None = None) -> None:
    """Waits for a request until the deadline: spinning on Test() for spin_s, then napping
    between tests (None: spinning throughout, as large transfers need: Open MPI's TCP transport
    moves data only inside MPI calls). MPI's blocking calls spin on a core; where many ranks
    share few cores (the simulated cluster) a spinning rank takes the CPU from the pair being
    timed and turns microseconds into milliseconds. So a spin yields the core between tests (at
    once back when no one else wants it), and waits that may be long nap."""
    started = time.monotonic()
    while not request.Test():
        now = time.monotonic()
        if now > deadline:
            LEFT_BEHIND.append(request)  # its buffer must outlive it: MPI may still write there
            raise Stuck
        if spin_s is not None and now - started >= spin_s:
            time.sleep(NAP_S)
        else:
            os.sched_yield()


def meet(comm, peer: int, opening: bool, deadline: float) -> None:
    """The pair's first message, from the opener: it opens the connection, and both wait."""
    hello = bytearray(1)
    if opening:
        finish(comm.Isend(hello, dest=peer, tag=TAG), deadline, spin_s=0.0)
        return
    request = comm.Irecv(hello, source=peer, tag=TAG)
    try:
        finish(request, deadline, spin_s=0.0)
    except Stuck:
        request.Cancel()  # a hello that comes late must not land in a later receive
        raise


def exchange(comm, peer: int, buf, send_first: bool, deadline: float,
             spin_s: float | None = None) -> None:
    """One message each way, in order; both bounded by the deadline."""
    if send_first:
        finish(comm.Isend(buf, dest=peer, tag=TAG), deadline, spin_s)
        finish(comm.Irecv(buf, source=peer, tag=TAG), deadline, spin_s)
    else:
        finish(comm.Irecv(buf, source=peer, tag=TAG), deadline, spin_s)
        finish(comm.Isend(buf, dest=peer, tag=TAG), deadline, spin_s)


def ping_pong_us(comm, peer: int, lead: bool, deadline: float) -> float:
    """Half the first-quartile round trip of 8-byte messages, in microseconds. A slow link
    slows every round trip; a rank that waited for a core (other ranks or jobs on the host)
    slows some, so the quicker ones measure the link and the median would measure the load."""
    buf = bytearray(8)
    times = []
    for i in range(WARMUP + PINGS):
        start = time.perf_counter()
        exchange(comm, peer, buf, lead, deadline, SPIN_S)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.quantiles(times, n=4)[0] / 2 * 1e6


def stream_mbps(comm, peer: int, sending: bool, payload: bytearray, deadline: float,
                plan_by: float) -> float | None:
    """MB/s one way: the best of a few bursts, each timed by the sender up to a one-byte reply
    (the best, as a busy host can stall any single burst). The sender leads: before each burst
    it says how large its messages are (0: no more). The first burst is small and sizes the link;
    the next ones are as large as fit before plan_by, so a slow link (100 Mbit/s) is measured
    in its slot rather than given up. The receiver follows, bounded by the deadline."""
    control, ack = array("q", [0]), bytearray(1)
    size = min(len(payload), SIZING_BYTES)
    rates: list[tuple[int, float]] = []  # (bytes per message, MB/s) of each burst
    for burst in range(BURSTS + 1):
        if not sending:
            finish(comm.Irecv(control, source=peer, tag=TAG), deadline)
            if control[0] == 0:
                break
            for _ in range(BURST_MESSAGES):
                finish(comm.Irecv(payload, source=peer, tag=TAG), deadline)
            finish(comm.Isend(ack, dest=peer, tag=TAG), deadline)
            continue
        control[0] = size
        finish(comm.Isend(control, dest=peer, tag=TAG), deadline)
        if size == 0:
            break
        start = time.perf_counter()
        for _ in range(BURST_MESSAGES):
            finish(comm.Isend(memoryview(payload)[:size], dest=peer, tag=TAG), deadline)
        finish(comm.Irecv(ack, source=peer, tag=TAG), deadline)
        rates.append((size, size * BURST_MESSAGES / (time.perf_counter() - start) / 1e6))
        size = next_size(rates[-1][1], plan_by - time.monotonic(), len(payload), burst)
    # The largest bursts only: a small one fits in the queues and buffers on the way (a
    # throttled link's token bucket) and reads faster than the link.
    return max(rates)[1] if sending else None


def next_size(mbps: float, left_s: float, largest: int, burst: int) -> int:
    """Bytes per message of the next burst: what fits in a third of the time left at the rate
    seen (at most the full payload, at least the sizing burst's), or 0 to stop."""
    if burst >= BURSTS:
        return 0
    fits = int(mbps * 1e6 * left_s / 3 / BURST_MESSAGES)
    return min(largest, fits) if fits >= SIZING_BYTES else 0


def both_ways_mbps(comm, peer: int, opening: bool, payload: bytearray, deadline: float
                   ) -> dict | None:
    """Bandwidth opener -> other, then back (a link can be slow one way only), each direction
    planned into half of the time left; the opener gets both figures, the other None."""
    half = time.monotonic() + (deadline - time.monotonic()) / 2
    first = stream_mbps(comm, peer, opening, payload, deadline, half)
    second = stream_mbps(comm, peer, not opening, payload, deadline, deadline)
    figure = array("d", [second or 0.0])
    exchange(comm, peer, figure, not opening, deadline)  # the other side's figure comes over
    return {"a_b": round(first, 1), "b_a": round(figure[0], 1)} if opening else None


class Clock:
    """The pair schedule's deadlines, the same on every rank: round k has a slot of
    slot_s starting at k * slot_s after the start. The opener gives the first message wait_s
    into the slot; the other side waits SKEW_S longer (ranks start a little apart). A pair
    given up thus costs its own slot only, and a rank that sat it out is not late for the next."""

    def __init__(self, wait_s: float, measure_s: float) -> None:
        self.start = time.monotonic()
        self.wait_s = wait_s
        self.slot_s = wait_s + SKEW_S + measure_s

    def meet_by(self, round_index: int, opening: bool) -> float:
        return (self.start + round_index * self.slot_s + self.wait_s
                + (0.0 if opening else SKEW_S))

    def measure_by(self, round_index: int) -> float:
        """The end of the round's slot, but at least a moment from now."""
        return max(self.start + (round_index + 1) * self.slot_s,
                   time.monotonic() + LATENCY_SLOT_S)


def measure_pair(comm, peer: int, opening: bool, payload: bytearray | None, clock: Clock,
                 round_index: int) -> dict:
    """Latency (and bandwidth) with one peer; raises Stuck (with the phase) when it stops."""
    try:
        meet(comm, peer, opening, clock.meet_by(round_index, opening))
    except Stuck as exc:
        raise Stuck("meet") from exc
    deadline = clock.measure_by(round_index)
    try:
        us = ping_pong_us(comm, peer, opening, deadline)
        rates = both_ways_mbps(comm, peer, opening, payload, deadline) if payload else None
    except Stuck as exc:
        raise Stuck("measure") from exc
    return {"latency_us": round(us, 2), "MBps": rates}


def measure_pairs(comm, size_mib: float, bandwidth: bool, wait_s: float, seed: int = 0
                  ) -> None:
    """This rank's pairs, round by round. A pair whose first message does not come through in
    time is given up ("stuck"), so the other pairs are still measured; the opener of each pair
    prints its figures."""
    rank, size = comm.Get_rank(), comm.Get_size()
    payload = bytearray(int(size_mib * 1024 * 1024)) if bandwidth else None
    clock = Clock(wait_s, slot_measure_s(bandwidth))
    for index, round_pairs in enumerate(schedule(size, seed)):
        peer = partner(round_pairs, rank)
        if peer is None:
            continue
        opening = opener(rank, peer, size) == rank
        emit({"event": "start", "rank": rank, "peer": peer})
        try:
            figures = measure_pair(comm, peer, opening, payload, clock, index)
        except Stuck as exc:
            emit({"event": "stuck", "rank": rank, "peer": peer, "opening": opening,
                  "phase": str(exc)})
            continue
        emit({"event": "done", "rank": rank, "peer": peer})
        if opening:
            emit({"event": "pair", "a": rank, "b": peer, **figures})


def slot_measure_s(bandwidth: bool) -> float:
    """Time a pair's measurement takes at most in a round's slot (the rest is for meeting)."""
    return BANDWIDTH_SLOT_S if bandwidth else LATENCY_SLOT_S


def settle(request) -> None:
    """Waits for a collective with no deadline (mpirun runs under checks/mpi.py's timeout),
    napping between tests: a blocking collective spins on a core in every rank, and where many
    ranks share few cores (16 simulated hosts on 2) each of its steps then waits for the
    scheduler to run the rank it needs, which made the few collectives below take most of a
    second."""
    finish(request, float("inf"), spin_s=0.0)


def reduced(comm, mpi, values: array, op) -> array:
    """values allreduced with op across all ranks (MPI_Iallreduce on the buffer)."""
    out = array(values.typecode, bytes(values.itemsize * len(values)))
    settle(comm.Iallreduce(values, out, op=op))
    return out


def all_hostnames(comm) -> list[str]:
    """Every rank's hostname, in rank order (MPI_Iallgather of fixed-width names)."""
    width = 256
    mine = bytearray(socket.gethostname().encode()[:width].ljust(width, b"\0"))
    every = bytearray(width * comm.Get_size())
    settle(comm.Iallgather(mine, every))
    return [every[i:i + width].rstrip(b"\0").decode(errors="replace")
            for i in range(0, len(every), width)]


def check_allreduce(comm, mpi) -> dict:
    """Sums the ranks and a float array across all ranks and checks both on every rank."""
    size, rank = comm.Get_size(), comm.Get_rank()
    total = reduced(comm, mpi, array("q", [rank]), mpi.SUM)[0]
    mine = array("d", (rank + 0.5 * i for i in range(ARRAY_LEN)))
    summed = reduced(comm, mpi, mine, mpi.SUM)
    # Every term is a multiple of 0.5 well below 2**52, so the sum is exact in any order.
    base = size * (size - 1) / 2
    array_ok = all(summed[i] == base + size * 0.5 * i for i in range(ARRAY_LEN))
    mine_ok = total == size * (size - 1) // 2 and array_ok
    ok = reduced(comm, mpi, array("i", [int(mine_ok)]), mpi.LAND)[0]
    return {"ok": bool(ok), "sum_of_ranks": total, "expected": size * (size - 1) // 2,
            "array_ok": bool(array_ok), "array_len": ARRAY_LEN}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MPI pair and allreduce probe")
    parser.add_argument("--bandwidth", action="store_true")
    parser.add_argument("--size-mib", type=float, default=8.0)
    parser.add_argument("--pair-wait-s", type=float, default=10.0,
                        help="give a pair up when its first message takes longer than this")
    parser.add_argument("--seed", type=int, default=0,
                        help="of the random pairings beyond ALL_PAIRS_UP_TO ranks")
    args = parser.parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    start = time.monotonic()
    emit({"event": "init", "rank": rank, "host": socket.gethostname()})
    pairs_from = time.monotonic()
    measure_pairs(comm, args.size_mib, args.bandwidth, args.pair_wait_s, args.seed)
    pairs_s = time.monotonic() - pairs_from
    # Ranks done with their pairs wait here napping, not spinning in allgather's MPI wait, so
    # that on shared cores they leave the CPU to the pairs still being timed.
    settle(comm.Ibarrier())
    hosts = all_hostnames(comm)
    allreduce = check_allreduce(comm, MPI)
    if rank == 0:
        emit({"event": "result", "size": comm.Get_size(), "hosts": hosts,
              "allreduce": allreduce, "message_mib": args.size_mib if args.bandwidth else None,
              "library": MPI.Get_library_version().splitlines()[0].strip("\0 "),
              "seconds": round(time.monotonic() - start, 3), "pairs_s": round(pairs_s, 3)})
    return 0


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
