"""The burst agent: what one network carries between two hosts, in a short TCP burst.

Standard library only: it is sent as `python -c <this file>` over ssh. Two roles, one per host
of the pair, talking to the runner (active/networks.py) in JSON lines:

    receiver: --listen ADDRESS        -> {"event": "ready", "port"}
                                      -> {"event": "result", "bytes", "seconds"}
    sender:   --to ADDRESS:PORT --source ADDRESS --seconds S
                                      -> {"event": "result", "rtt_ms", "sent"} or {"error"}

The sender first times PINGS one-byte round trips (the receiver echoes them), then sends for S
seconds and closes. The receiver times the bulk from its first byte to the end of the stream,
so what waited in the socket buffers when the sender stopped is counted when it arrives, not
when it was handed to the kernel: the rate is what crossed the network.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time

PINGS = 5
CHUNK = 256 * 1024


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def receive(address: str, wait_s: float) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((address, 0))
        listener.listen(1)
        listener.settimeout(wait_s)
        emit({"event": "ready", "port": listener.getsockname()[1]})
        try:
            conn, _ = listener.accept()
        except OSError as exc:  # socket.timeout is one
            return {"event": "result", "error": f"no connection came: {exc}"}
    with conn:
        conn.settimeout(wait_s)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for _ in range(PINGS):
                conn.sendall(conn.recv(1))
            return {"event": "result", **drain(conn)}
        except OSError as exc:
            return {"event": "result", "error": f"the burst broke off: {exc}"}


def drain(conn: socket.socket) -> dict:
    buffer = bytearray(CHUNK)
    total, first, last = 0, None, None
    while True:
        got = conn.recv_into(buffer)
        if not got:
            break
        last = time.perf_counter()
        first = first or last
        total += got
    seconds = (last - first) if first is not None and last is not None else 0.0
    return {"bytes": total, "seconds": round(seconds, 6)}


def send(target: tuple[str, int], source: str, seconds: float, wait_s: float) -> dict:
    try:
        conn = socket.create_connection(target, timeout=wait_s, source_address=(source, 0))
    except OSError as exc:
        return {"event": "result", "error": f"could not connect: {exc.strerror or exc}"}
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            rtts = []
            for _ in range(PINGS):
                start = time.perf_counter()
                conn.sendall(b"p")
                if not conn.recv(1):
                    return {"event": "result", "error": "closed by the receiver"}
                rtts.append((time.perf_counter() - start) * 1000)
            payload, sent = memoryview(bytes(CHUNK)), 0
            until = time.perf_counter() + seconds
            while time.perf_counter() < until:
                conn.sendall(payload)
                sent += CHUNK
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # the receiver closes once it has read everything
        except OSError as exc:
            return {"event": "result", "error": f"the burst broke off: {exc.strerror or exc}"}
    return {"event": "result", "rtt_ms": round(statistics.median(rtts), 3), "sent": sent}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", metavar="ADDRESS")
    parser.add_argument("--to", metavar="ADDRESS:PORT")
    parser.add_argument("--source", metavar="ADDRESS", default="")
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--wait-s", type=float, default=5.0,
                        help="for the connection, and for each read and write")
    args = parser.parse_args(argv)
    if args.listen:
        emit(receive(args.listen, args.wait_s))
    else:
        host, port = args.to.rsplit(":", 1)
        emit(send((host, int(port)), args.source, args.seconds, args.wait_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
