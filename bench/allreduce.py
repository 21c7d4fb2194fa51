"""How close Horovod's allreduce gets to the link: its bus bandwidth over the cluster network at
message sizes from 1 KiB to 64 MiB, beside a raw MPI allreduce and a plain TCP stream.

Bus bandwidth is 2(n-1)/n x bytes / time, the figure NCCL's tests report: the traffic each rank
puts on its link in a ring allreduce, so that it compares with the link's own bandwidth whatever n.

  horovod   horovodrun -np n -H h1:1,..  --network-interfaces eth0, then hvd.allreduce on a
            float32 TensorFlow tensor in eager mode, as a gradient would go (Horovod over MPI);
            once with Horovod's defaults, once with HOROVOD_CYCLE_TIME=0.1 (ms, default 1),
            which shows what the background thread's cycle adds to each allreduce
  mpi       mpirun with the preflight's transport flags (TCP on 10.231.0.0/24 only), then
            mpi4py's Allreduce on a float32 numpy array: what Horovod could at best get from MPI
  tcp       one TCP stream from h1 to h2 (this file's tcp-send and tcp-recv): the link's ceiling
            for one connection, which is what Open MPI's TCP transport opens per pair

The worker halves run on the simulated hosts: `python bench/allreduce.py worker --lib horovod
|mpi ...` under horovodrun/mpirun, `tcp-recv` and `tcp-send` under `cluster.sh exec`. Bytes and
time are bounded everywhere: each size runs a fixed byte budget (within an iteration range), the
TCP stream stops at a byte count or a time limit, and every process has a timeout. A size's time
is the median over its iterations of the slowest rank's time.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from common import (
    HOROVODRUN,
    IFACE,
    MPI_TRANSPORT,
    PYTHON,
    Cluster,
    Say,
    fmt,
    host_list,
    last_json_line,
    median,
    new_figure,
    ratio,
    save_figure,
    verdict,
    write_json,
)

from preflight.proc import stop_group

if TYPE_CHECKING:
    from rich.console import Console

NAME = "allreduce"
KIB = 1024
MIB = 1024 * KIB
SIZES = tuple(KIB * 4**k for k in range(9))  # 1 KiB, 4 KiB, ... 64 MiB
BUDGET_BYTES = 1024 * MIB  # per size: iterations x bytes, within MIN/MAX_ITERS
QUICK_BUDGET_BYTES = 256 * MIB
MIN_ITERS, MAX_ITERS = 5, 200
TCP_PORT = 47011
TCP_BYTES = 4096 * MIB
TCP_SECONDS = 3.0
TCP_CHUNK = 4 * MIB
TIMEOUT_S = 300
SELF = str(Path(__file__).resolve())
# name: (worker --lib, extra environment, label). The second Horovod series shows what the
# fusion cycle (HOROVOD_CYCLE_TIME, 1 ms by default) adds to every allreduce that runs alone.
SERIES = {
    "horovod": ("horovod", {}, "Horovod (hvd.allreduce, defaults)"),
    "horovod_cycle01": ("horovod", {"HOROVOD_CYCLE_TIME": "0.1"},
                        "Horovod, HOROVOD_CYCLE_TIME=0.1 ms"),
    "mpi": ("mpi", {}, "raw MPI (mpi4py Allreduce)"),
}
TARGET = 0.9  # Horovod's bus bandwidth at 64 MiB against raw MPI's


def iterations(nbytes: int, budget: int) -> int:
    return max(MIN_ITERS, min(MAX_ITERS, budget // nbytes))


def bus_bandwidth(nbytes: int, seconds: float, ranks: int) -> float:
    """Bytes per second each rank moves over its link in a ring allreduce."""
    return 2 * (ranks - 1) / ranks * nbytes / seconds


# --- worker: runs on every rank ------------------------------------------------------------------

class HorovodOps:
    """hvd.allreduce on eager TensorFlow tensors, as DistributedOptimizer's gradients go."""

    def __init__(self) -> None:
        import horovod.tensorflow as hvd
        import tensorflow as tf

        hvd.init()
        self.hvd, self.tf = hvd, tf
        self.rank, self.size = hvd.rank(), hvd.size()

    def buffer(self, count: int):
        return self.tf.ones([count], self.tf.float32)

    def allreduce(self, tensor, name: str):
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=name)

    def first(self, result) -> float:
        return float(result[0].numpy())

    def barrier(self) -> None:
        self.hvd.allreduce(self.tf.zeros([1]), op=self.hvd.Sum, name="barrier").numpy()

    def slowest(self, seconds: list[float]) -> list[float]:
        return self.hvd.allreduce(self.tf.constant(seconds, self.tf.float64), op=self.hvd.Max,
                                  name=f"slowest_{len(seconds)}").numpy().tolist()


class MpiOps:
    """mpi4py's buffer Allreduce on numpy arrays: MPI with nothing in between."""

    def __init__(self) -> None:
        import numpy as np
        from mpi4py import MPI

        self.np, self.mpi, self.comm = np, MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.out = None

    def buffer(self, count: int):
        self.out = self.np.empty(count, self.np.float32)
        return self.np.ones(count, self.np.float32)

    def allreduce(self, array, name: str):
        self.comm.Allreduce(array, self.out, op=self.mpi.SUM)
        return self.out

    def first(self, result) -> float:
        return float(result[0])

    def barrier(self) -> None:
        self.comm.Barrier()

    def slowest(self, seconds: list[float]) -> list[float]:
        mine = self.np.array(seconds)
        out = self.np.empty_like(mine)
        self.comm.Allreduce(mine, out, op=self.mpi.MAX)
        return out.tolist()


def worker(lib: str, sizes: Sequence[int], budget: int) -> int:
    ops = HorovodOps() if lib == "horovod" else MpiOps()
    rows = []
    for nbytes in sizes:
        data = ops.buffer(nbytes // 4)
        name = f"bench_{nbytes}"  # the same name every step, as a gradient has
        iters = iterations(nbytes, budget)
        for _ in range(max(2, iters // 10)):  # connections, buffers, Horovod's response cache
            result = ops.allreduce(data, name)
        if ops.first(result) != ops.size:
            raise SystemExit(f"allreduce of ones gave {ops.first(result)}, not {ops.size}")
        ops.barrier()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            ops.allreduce(data, name)  # eager TensorFlow runs it to the end before returning
            times.append(time.perf_counter() - start)
        # An allreduce is as slow as its slowest rank; the median over the iterations keeps a
        # moment of the machine's other load (2 cores, shared) out of the figure.
        seconds = statistics.median(ops.slowest(times))
        rows.append({"bytes": nbytes, "iters": iters, "seconds": seconds,
                     "mean_seconds": sum(times) / len(times),
                     "busbw_MBps": bus_bandwidth(nbytes, seconds, ops.size) / 1e6})
    if ops.rank == 0:
        # One write with its newline: print() writes the newline apart, and mpirun's output
        # tagging may then put the next tag on this line.
        sys.stdout.write(json.dumps({"lib": lib, "ranks": ops.size, "rows": rows}) + "\n")
        sys.stdout.flush()
    return 0


# --- TCP stream: the link's ceiling --------------------------------------------------------------

def tcp_recv(port: int, timeout_s: float) -> int:
    """Accepts one stream, reads it to the end, answers with the byte count."""
    with socket.create_server(("", port)) as server:
        server.settimeout(timeout_s)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(timeout_s)
            buf = memoryview(bytearray(TCP_CHUNK))
            total = 0
            while n := conn.recv_into(buf):
                total += n
            conn.sendall(struct.pack("!Q", total))
    return 0


def tcp_send(host: str, port: int, nbytes: int, seconds: float) -> int:
    """Streams zeros to host:port until nbytes or seconds, then prints the rate the receiver
    confirms (bytes it counted over the time until its answer came back)."""
    sock = connect(host, port, deadline=time.monotonic() + 10)
    with sock:
        chunk = memoryview(bytes(TCP_CHUNK))
        start = time.perf_counter()
        sent = 0
        while sent < nbytes and time.perf_counter() - start < seconds:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        (received,) = struct.unpack("!Q", recv_exactly(sock, 8))
        elapsed = time.perf_counter() - start
    print(json.dumps({"bytes": received, "seconds": elapsed, "MBps": received / elapsed / 1e6}),
          flush=True)
    return 0 if received == sent else 1


def connect(host: str, port: int, deadline: float) -> socket.socket:
    """The receiver starts in another namespace at about the same time: retry until it listens."""
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=30)
            sock.settimeout(30)
            return sock
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise ConnectionError("the receiver closed before answering")
        data += more
    return data


# --- the driver: runs on this machine ------------------------------------------------------------

def worker_args(sizes: Sequence[int], budget: int, lib: str) -> list[str]:
    return [PYTHON, SELF, "worker", "--lib", lib, "--budget", str(budget),
            "--sizes", ",".join(map(str, sizes))]


def horovod_argv(hosts: Sequence[str], sizes: Sequence[int], budget: int) -> list[str]:
    # horovodrun builds the mpirun line itself (pml ob1, btl ^openib, btl_tcp_if_include from
    # --network-interfaces); mpirun's own wiring is put on the cluster network as for raw MPI.
    return [HOROVODRUN, "--disable-cache", "-np", str(len(hosts)), "-H", host_list(hosts),
            "--network-interfaces", IFACE,
            f"--mpi-args=--mca oob_tcp_if_include {MPI_TRANSPORT[-1]}",
            *worker_args(sizes, budget, "horovod")]


def mpi_argv(hosts: Sequence[str], sizes: Sequence[int], budget: int) -> list[str]:
    return ["mpirun", "-np", str(len(hosts)), "-H", host_list(hosts), "--map-by", "slot",
            "--bind-to", "none", *MPI_TRANSPORT, "--allow-run-as-root",
            *worker_args(sizes, budget, "mpi")]


def run_worker(cluster: Cluster, argv: list[str], env: dict[str, str]) -> dict:
    result = cluster.run("h1", argv, TIMEOUT_S, env)
    try:
        if result.ok:
            return last_json_line(result.stdout)
    except ValueError:
        pass
    raise RuntimeError(f"allreduce worker failed: {result.why()}")


def tcp_stream(cluster: Cluster, sender: str, receiver: str, seconds: float) -> float:
    """MB/s of one TCP stream from sender to receiver over the cluster network."""
    recv = subprocess.Popen(cluster.exec_argv(receiver, [PYTHON, SELF, "tcp-recv",
                                                         "--port", str(TCP_PORT)]),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=cluster.env(),
                            start_new_session=True)
    try:
        send = cluster.run(sender, [PYTHON, SELF, "tcp-send", "--host", receiver,
                                    "--port", str(TCP_PORT), "--bytes", str(TCP_BYTES),
                                    "--seconds", str(seconds)], 60)
        if not send.ok:
            raise RuntimeError(f"TCP stream {sender} -> {receiver} failed: {send.why()}")
        return last_json_line(send.stdout)["MBps"]
    finally:
        try:
            recv.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop_group(recv)


def measure(cluster: Cluster, ranks: int, repeat: int, quick: bool, say: Say) -> dict:
    hosts = cluster.hosts(ranks)
    budget = QUICK_BUDGET_BYTES if quick else BUDGET_BYTES
    runs: dict[str, list[dict]] = {name: [] for name in SERIES}
    tcp: list[float] = []
    for i in range(repeat):
        say(f"allreduce: {ranks} hosts, repeat {i + 1}/{repeat}")
        # In the other order every other repeat: a change of load lands on every series alike.
        for name in list(SERIES) if i % 2 == 0 else list(SERIES)[::-1]:
            lib, env, _ = SERIES[name]
            argv = (horovod_argv if lib == "horovod" else mpi_argv)(hosts, SIZES, budget)
            runs[name].append(run_worker(cluster, argv, env))
        tcp.append(tcp_stream(cluster, hosts[0], hosts[1], 1.0 if quick else TCP_SECONDS))
    return summarise(runs, tcp, ranks, repeat)


def summarise(runs: dict[str, list[dict]], tcp: list[float], ranks: int, repeat: int) -> dict:
    rows = []
    for index, nbytes in enumerate(SIZES):
        row = {"bytes": nbytes}
        for name, results in runs.items():
            row[f"{name}_busbw_MBps"] = median(r["rows"][index]["busbw_MBps"] for r in results)
            row[f"{name}_us"] = median(r["rows"][index]["seconds"] * 1e6 for r in results)
        row["horovod_vs_mpi"] = ratio(row["horovod_busbw_MBps"], row["mpi_busbw_MBps"])
        rows.append(row)
    last = rows[-1]
    return {"ranks": ranks, "repeat": repeat, "tcp_MBps": median(tcp), "tcp_runs_MBps": tcp,
            "series": {name: {"lib": lib, "env": env, "label": label}
                       for name, (lib, env, label) in SERIES.items()},
            "rows": rows,
            "target": {"what": f"Horovod bus bandwidth at {last['bytes'] // MIB} MiB at least "
                               f"{TARGET} of raw MPI's",
                       "ratio": last["horovod_vs_mpi"],
                       "met": None if last["horovod_vs_mpi"] is None
                       else last["horovod_vs_mpi"] >= TARGET}}


def size_text(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"


def report(result: dict, console: Console) -> list:
    from rich.table import Table

    tcp = result["tcp_MBps"]
    table = Table(title=f"Allreduce over {result['ranks']} hosts on {IFACE}: bus bandwidth "
                        f"(MB/s) and time per allreduce, median of {result['repeat']}; one TCP "
                        f"stream: {fmt(tcp, ',.0f')} MB/s")
    for column in ("size", "Horovod", "MPI", "Hvd÷MPI", "Hvd÷TCP", "MPI÷TCP", "Horovod µs",
                   "cycle 0.1 µs", "MPI µs"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(size_text(row["bytes"]), fmt(row["horovod_busbw_MBps"], ",.0f"),
                      fmt(row["mpi_busbw_MBps"], ",.0f"), fmt(row["horovod_vs_mpi"], ".2f"),
                      fmt(ratio(row["horovod_busbw_MBps"], tcp), ".2f"),
                      fmt(ratio(row["mpi_busbw_MBps"], tcp), ".2f"),
                      fmt(row["horovod_us"], ",.0f"), fmt(row["horovod_cycle01_us"], ",.0f"),
                      fmt(row["mpi_us"], ",.0f"))
    console.print(table)
    t = result["target"]
    console.print(f"target: {t['what']}: {verdict(t['met'])} ({fmt(t['ratio'], '.2f')})")
    return [table]


def plot(result: dict):
    fig, ax = new_figure(f"Allreduce bus bandwidth, {result['ranks']} hosts over TCP")
    sizes = [r["bytes"] for r in result["rows"]]
    for (name, series), style in zip(result["series"].items(), ("o-", "^:", "s-")):
        ax.plot(sizes, [r[f"{name}_busbw_MBps"] for r in result["rows"]], style,
                label=series["label"])
    if result["tcp_MBps"]:
        ax.axhline(result["tcp_MBps"], color="k", linestyle="--", label="one TCP stream")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [size_text(s) for s in sizes], fontsize=8)
    ax.set_xlabel("message size")
    ax.set_ylabel("bus bandwidth, MB/s")
    ax.legend(fontsize=8)
    return save_figure(NAME, fig)


def run(cluster: Cluster, ranks: int, repeat: int, quick: bool, console: Console,
        say: Say) -> dict:
    result = measure(cluster, ranks, repeat, quick, say)
    report(result, console)
    paths = [write_json(NAME, result), plot(result)]
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Worker halves of the allreduce benchmark.")
    sub = parser.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("worker", help="time allreduce on every rank (under mpirun/horovodrun)")
    w.add_argument("--lib", choices=["horovod", "mpi"], required=True)
    w.add_argument("--sizes", default=",".join(map(str, SIZES)), help="bytes, comma-separated")
    w.add_argument("--budget", type=int, default=BUDGET_BYTES, help="bytes per size")
    r = sub.add_parser("tcp-recv", help="receive one stream and answer with its byte count")
    r.add_argument("--port", type=int, default=TCP_PORT)
    r.add_argument("--timeout", type=float, default=30.0)
    s = sub.add_parser("tcp-send", help="stream to tcp-recv, print the rate")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, default=TCP_PORT)
    s.add_argument("--bytes", type=int, default=TCP_BYTES)
    s.add_argument("--seconds", type=float, default=TCP_SECONDS)
    args = parser.parse_args(argv)
    if args.mode == "worker":
        return worker(args.lib, [int(x) for x in args.sizes.split(",")], args.budget)
    if args.mode == "tcp-recv":
        return tcp_recv(args.port, args.timeout)
    return tcp_send(args.host, args.port, args.bytes, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
