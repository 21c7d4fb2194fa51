"""The MPI probe: one rank per host under mpirun, the same transport the training job will use.

Run by checks/mpi.py as `mpirun ... python -c <this file> [--bandwidth]`, so it needs nothing on
the hosts but the venv's Python with mpi4py. It prints JSON lines:

  {"event": "init", "rank", "host"}         every rank, as soon as MPI is up
  {"event": "start", "rank", "peer"}         every rank, as it turns to a pair
  {"event": "pair", "a", "b", "latency_us", "MBps": {"a_b", "b_a"}}
                                            the rank that opened the pair's connection (a), when
                                            that pair is done
  {"event": "result", "hosts", "allreduce", ...}   rank 0, at the end

Pairs come first, in rounds of disjoint pairs (a round-robin tournament: n - 1 rounds for an even
n, n for an odd n), and in each pair a fixed side opens the TCP connection, chosen so that every
host has connections opened towards it (h1 -> h2, h2 -> h3, h3 -> h1 for three). Open MPI opens a
connection the first time a rank sends to a peer and reuses it both ways after, so without this a
host that drops incoming connections can pass or hang depending on who happened to send first.
A pair that both ranks started and that never finished is how a firewall shows.
Then the allreduce, checked: the sum of the ranks, and of a float array.

Standard library and mpi4py only; mpi4py is imported in main() so tests can import the rest.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from array import array

ARRAY_LEN = 4096
PINGS = 50
WARMUP = 5
BANDWIDTH_REPEATS = 4
TAG = 7
POLL_S = 0.0005


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


def wait_politely(request) -> None:
    """Waits for a request while sleeping. MPI's blocking calls spin on a core; a rank waiting
    for its partner would take CPU from the pair being timed where cores are few."""
    while not request.Test():
        time.sleep(POLL_S)


def meet(comm, peer: int, opening: bool) -> None:
    """The pair's first message, from the opener: it opens the connection, and both wait."""
    hello = bytearray(1)
    if opening:
        wait_politely(comm.Isend(hello, dest=peer, tag=TAG))
    else:
        wait_politely(comm.Irecv(hello, source=peer, tag=TAG))


def ping_pong_us(comm, peer: int, lead: bool) -> float:
    """Half the median round trip of 8-byte messages, in microseconds."""
    buf = bytearray(8)
    times = []
    for i in range(WARMUP + PINGS):
        start = time.perf_counter()
        if lead:
            comm.Send(buf, dest=peer, tag=TAG)
            comm.Recv(buf, source=peer, tag=TAG)
        else:
            comm.Recv(buf, source=peer, tag=TAG)
            comm.Send(buf, dest=peer, tag=TAG)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times) / 2 * 1e6


def stream_mbps(comm, peer: int, sending: bool, payload: bytearray) -> float | None:
    """MB/s of a few large messages one way, timed by the sender up to a one-byte reply."""
    ack = bytearray(1)
    if sending:
        start = time.perf_counter()
        for _ in range(BANDWIDTH_REPEATS):
            comm.Send(payload, dest=peer, tag=TAG)
        comm.Recv(ack, source=peer, tag=TAG)
        return len(payload) * BANDWIDTH_REPEATS / (time.perf_counter() - start) / 1e6
    for _ in range(BANDWIDTH_REPEATS):
        comm.Recv(payload, source=peer, tag=TAG)
    comm.Send(ack, dest=peer, tag=TAG)
    return None


def both_ways_mbps(comm, peer: int, opening: bool, payload: bytearray) -> dict | None:
    """Bandwidth opener -> other, then back (a link can be slow one way only); the opener gets
    both figures, the other None."""
    first = stream_mbps(comm, peer, opening, payload)
    second = stream_mbps(comm, peer, not opening, payload)
    if opening:
        return {"a_b": round(first, 1), "b_a": round(comm.recv(source=peer, tag=TAG), 1)}
    comm.send(second, dest=peer, tag=TAG)
    return None


def measure_pairs(comm, size_mib: float, bandwidth: bool) -> None:
    """This rank's pairs, round by round; the opener of each prints its figures."""
    rank, size = comm.Get_rank(), comm.Get_size()
    payload = bytearray(int(size_mib * 1024 * 1024)) if bandwidth else bytearray()
    for round_pairs in round_robin(size):
        peer = partner(round_pairs, rank)
        if peer is None:
            continue
        opening = opener(rank, peer, size) == rank
        emit({"event": "start", "rank": rank, "peer": peer})
        meet(comm, peer, opening)
        us = ping_pong_us(comm, peer, opening)
        rates = both_ways_mbps(comm, peer, opening, payload) if bandwidth else None
        if opening:
            emit({"event": "pair", "a": rank, "b": peer, "latency_us": round(us, 2),
                  "MBps": rates})


def check_allreduce(comm, mpi) -> dict:
    """Sums the ranks and a float array across all ranks and checks both on every rank."""
    size, rank = comm.Get_size(), comm.Get_rank()
    total = comm.allreduce(rank, op=mpi.SUM)
    mine = array("d", (rank + 0.5 * i for i in range(ARRAY_LEN)))
    summed = array("d", bytes(8 * ARRAY_LEN))
    comm.Allreduce(mine, summed, op=mpi.SUM)
    # Every term is a multiple of 0.5 well below 2**52, so the sum is exact in any order.
    base = size * (size - 1) / 2
    array_ok = all(summed[i] == base + size * 0.5 * i for i in range(ARRAY_LEN))
    ok = comm.allreduce(total == size * (size - 1) // 2 and array_ok, op=mpi.LAND)
    return {"ok": bool(ok), "sum_of_ranks": total, "expected": size * (size - 1) // 2,
            "array_ok": bool(array_ok), "array_len": ARRAY_LEN}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MPI pair and allreduce probe")
    parser.add_argument("--bandwidth", action="store_true")
    parser.add_argument("--size-mib", type=float, default=8.0)
    args = parser.parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    start = time.monotonic()
    emit({"event": "init", "rank": rank, "host": socket.gethostname()})
    measure_pairs(comm, args.size_mib, args.bandwidth)
    hosts = comm.allgather(socket.gethostname())
    allreduce = check_allreduce(comm, MPI)
    if rank == 0:
        emit({"event": "result", "size": comm.Get_size(), "hosts": hosts,
              "allreduce": allreduce, "message_mib": args.size_mib if args.bandwidth else None,
              "library": MPI.Get_library_version().splitlines()[0].strip("\0 "),
              "seconds": round(time.monotonic() - start, 3)})
    return 0


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
