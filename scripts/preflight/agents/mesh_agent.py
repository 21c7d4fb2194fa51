"""The mesh agent: runs on every host at once and tests TCP and the MTU to every other host.

Standard library only: it is sent as `python -c <this file>` over ssh, so nothing needs to be
installed on the host. It talks to the runner (active/mesh.py) in JSON lines:

    agent -> {"event": "ready", "label", "tcp_port", "udp_port", "mtu"}
    orch  -> {"peers": [{"label", "address", "tcp_port", "udp_port", "mtu", "loss_probes"}],
              "budget_s"}
    agent -> {"event": "result", "label", "mtu", "peers": [{"peer", "tcp", "port", "rtt_ms",
              "mtu_ok", "path_mtu", "mtu_error", "mtu_state", "loss_sent", "loss_echoed"}]}
    orch  -> "done" (or closes stdin): the agent stops serving and exits.

Both listeners take port 0, so the kernel hands out an ephemeral port above 1024, the range MPI's
and Gloo's TCP transports use: a firewall that lets ssh (22) through but drops those is the
classic cause of a job that hangs at its first allreduce.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Container
from concurrent.futures import ThreadPoolExecutor

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)  # Linux values
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
IP_MTU = getattr(socket, "IP_MTU", 14)
HEADERS = 28  # IPv4 (20) + UDP (8): an MTU-sized packet carries MTU - 28 bytes of payload
MAX_PAYLOAD = 65507  # the largest UDP payload over IPv4
MIN_MTU = 576  # every IPv4 path carries this
PINGS = 5
CONNECT_S = 2.5  # per connect attempt; there are two when the first times out
UDP_TRIES = 5  # a lossy link loses some datagrams: only five losses in a row mean "too big"
UDP_WAIT_S = 0.25
SEARCH_STEPS = 8
# An MTU limit is declared only when it repeats: CONFIRM_TRIES more datagrams at the full size
# all lost (with the first UDP_TRIES, 15 in a row: under 1e-7 at 30% random loss) while at
# least LIMIT_PASSES of CONFIRM_TRIES at the size found come back.
CONFIRM_TRIES = 10
LIMIT_PASSES = 4
BURST_GAP_S = 0.01  # between the datagrams of a confirmation burst
STRAGGLER_S = 0.3  # how long echoes are awaited after a burst's last datagram ...
LOSS_STRAGGLER_S = 1.0  # ... and after a loss burst's: on a loaded host a late echo is no loss
LOSS_SIZE = 64  # bytes of a loss probe: small, so loss and not the MTU is what it sees
LOSS_GAP_S = 0.002  # between loss probes: 500 a second, far below what any link carries
ECHO_BUFFER = 4 << 20  # the echo's receive queue (the kernel caps it at net.core.rmem_max)


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def interface_mtu(interface: str, expected: int) -> int:
    """The MTU the kernel has on the interface (what the facts said if it cannot be read)."""
    try:
        with open(f"/sys/class/net/{interface}/mtu") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return expected


def dont_fragment(sock: socket.socket) -> None:
    # With DF set an oversized datagram is refused (EMSGSIZE) or dropped, never split: the probe
    # then sees the real path MTU instead of a fragmented packet that silently got through.
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)


def serve_tcp(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=echo_tcp, args=(conn,), daemon=True).start()


def echo_tcp(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        try:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            return


def serve_udp(sock: socket.socket) -> None:
    # The echo goes back at the same size with DF set, so it also tests the reverse path.
    while True:
        try:
            data, peer = sock.recvfrom(65535)
        except OSError:
            return
        try:
            sock.sendto(data, peer)
        except OSError:
            continue


def tcp_probe(source: str, peer: dict, deadline: float) -> dict:
    """Connects to the peer's listener and times a few one-byte round trips; a timeout gets one
    more try, so that a lost SYN on a lossy link is not mistaken for a firewall."""
    attempt_s = min(CONNECT_S, max(0.5, (deadline - time.monotonic()) / 2))
    result = {"tcp": "timed out", "rtt_ms": None}
    for _ in range(2):
        result = tcp_attempt(source, peer, attempt_s)
        if result["tcp"] != "timed out" or time.monotonic() + attempt_s > deadline:
            break
    return result


def tcp_attempt(source: str, peer: dict, timeout_s: float) -> dict:
    target = (peer["address"], peer["tcp_port"])
    try:
        conn = socket.create_connection(target, timeout=timeout_s, source_address=(source, 0))
    except socket.timeout:
        return {"tcp": "timed out", "rtt_ms": None}
    except ConnectionRefusedError:
        return {"tcp": "refused", "rtt_ms": None}
    except OSError as exc:
        return {"tcp": exc.strerror or str(exc), "rtt_ms": None}
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        try:
            for _ in range(PINGS):
                start = time.perf_counter()
                conn.sendall(b"x")
                if not conn.recv(1):
                    return {"tcp": "closed by peer", "rtt_ms": None}
                rtts.append((time.perf_counter() - start) * 1000)
        except socket.timeout:
            return {"tcp": "timed out", "rtt_ms": None}
        except OSError as exc:
            return {"tcp": exc.strerror or str(exc), "rtt_ms": None}
    return {"tcp": "ok", "rtt_ms": round(statistics.median(rtts), 3)}


def udp_echo(sock: socket.socket, mtu: int, deadline: float) -> str:
    """'ok' if an MTU-sized datagram with DF comes back; else why not."""
    payload_size = min(mtu - HEADERS, MAX_PAYLOAD)
    token = os.urandom(8)
    payload = token + b"\0" * (payload_size - len(token))
    for _ in range(UDP_TRIES):
        wait_s = min(UDP_WAIT_S, deadline - time.monotonic())
        if wait_s <= 0:
            break
        try:
            sock.send(payload)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return "message too long"
            return exc.strerror or str(exc)
        if wait_for(sock, token, time.monotonic() + wait_s):
            return "ok"
    return "no echo"


def wait_for(sock: socket.socket, token: bytes, until: float) -> bool:
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(65535)
        except (socket.timeout, OSError):
            return False
        if data[:8] == token:
            return True


def kernel_path_mtu(sock: socket.socket) -> int | None:
    try:
        return sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except OSError:
        return None


def largest_passing(sock: socket.socket, low: int, high: int, deadline: float) -> int | None:
    """Binary search for the largest MTU in [low, high) that echoes; None if low fails too."""
    if udp_echo(sock, low, deadline) != "ok":
        return None
    for _ in range(SEARCH_STEPS):
        if high - low <= 1 or time.monotonic() >= deadline:
            break
        middle = (low + high) // 2
        if udp_echo(sock, middle, deadline) == "ok":
            low = middle
        else:
            high = middle
    return low


def echo_count(sock: socket.socket, size: int, tries: int, deadline: float,
               gap_s: float = BURST_GAP_S, straggler_s: float = STRAGGLER_S
               ) -> tuple[int, int]:
    """(echoed, sent): a burst of `tries` datagrams of `size` bytes (an MTU: headers included),
    each with its own token, then up to straggler_s for the echoes still out."""
    payload_size = max(HEADERS + 8, min(size, MAX_PAYLOAD + HEADERS)) - HEADERS
    tokens, seen, sent = set(), set(), 0
    for _ in range(tries):
        if time.monotonic() + straggler_s > deadline:
            break
        token = os.urandom(8)
        try:
            sock.send(token + b"\0" * (payload_size - len(token)))
        except OSError:
            break
        tokens.add(token)
        sent += 1
        drain(sock, tokens, seen, time.monotonic() + gap_s)
    drain(sock, tokens, seen, min(deadline, time.monotonic() + straggler_s), all_of=tokens)
    return len(seen), sent


def drain(sock: socket.socket, tokens: Container[bytes], seen: set[bytes], until: float,
          all_of: set[bytes] | None = None) -> None:
    """Collects echoed tokens until `until`, or until every token of all_of came back."""
    while time.monotonic() < until and not (all_of is not None and seen >= all_of):
        sock.settimeout(max(0.0005, until - time.monotonic()))
        try:
            data = sock.recv(65535)
        except (socket.timeout, OSError):
            return
        if data[:8] in tokens:
            seen.add(data[:8])


def mtu_probe(source: str, own_mtu: int, peer: dict, deadline: float) -> dict:
    """Sends a datagram as large as this host's MTU, DF set; on failure finds what does pass,
    and calls it a limit only when it repeats (see CONFIRM_TRIES): random loss also loses
    full-size datagrams, but not all of them while smaller ones come back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        dont_fragment(sock)
        sock.connect((peer["address"], peer["udp_port"]))
        outcome = udp_echo(sock, own_mtu, deadline)
        if outcome == "ok":
            return mtu_answer("ok", own_mtu)
        error = f"{outcome} at MTU {own_mtu}"
        found = None
        # The likely answers first (what the kernel learned, the peer's MTU), then a search.
        for guess in (kernel_path_mtu(sock), peer.get("mtu")):
            if guess and MIN_MTU <= guess < own_mtu and udp_echo(sock, guess, deadline) == "ok":
                found = guess
                break
        if found is None:
            found = largest_passing(sock, MIN_MTU, own_mtu, deadline)
        if found is None:
            return mtu_answer("silent", None, error)
        full = echo_count(sock, own_mtu, CONFIRM_TRIES, deadline)
        limit = echo_count(sock, found, CONFIRM_TRIES, deadline)
        counts = {"full": full, "limit": limit}
        if full[0] > 0:  # full-size datagrams do cross: what was lost was lost at random
            return mtu_answer("ok", own_mtu, f"{error}, then {full[0]} of {full[1]} crossed",
                              counts)
        if full[1] < CONFIRM_TRIES or limit[1] < CONFIRM_TRIES:
            return mtu_answer("unfinished", found, error, counts)
        if limit[0] >= LIMIT_PASSES:
            return mtu_answer("limit", found, error, counts)
        return mtu_answer("unclear", found, error, counts)


def mtu_answer(state: str, path_mtu: int | None, error: str = "",
               counts: dict | None = None) -> dict:
    """state: ok, limit (repeatable), silent (no echo at any size), unclear (too few echoes to
    tell loss from a limit) or unfinished (out of time)."""
    return {"mtu_ok": state == "ok", "path_mtu": path_mtu, "mtu_error": error,
            "mtu_state": state, "mtu_counts": counts or {}}


def loss_bursts(source: str, peers: list[dict], deadline: float) -> dict[str, dict]:
    """Per peer label, {"loss_sent", "loss_echoed"}: paced bursts of small datagrams to the
    peers that ask for them ("loss_probes"), all from one socket in one thread (a thread per
    peer, each waking every few milliseconds, costs a loaded host more than the probes)."""
    counts = {p["label"]: {"loss_sent": 0, "loss_echoed": 0} for p in peers}
    targets = [p for p in peers if int(p.get("loss_probes", 0)) > 0]
    if not targets:
        return counts
    owner: dict[bytes, str] = {}
    seen: set[bytes] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for index in range(max(int(p["loss_probes"]) for p in targets)):
            if time.monotonic() + LOSS_STRAGGLER_S > deadline:
                break
            for peer in targets:
                if index < int(peer["loss_probes"]):
                    token = os.urandom(8)
                    try:
                        sock.sendto(token + bytes(LOSS_SIZE - HEADERS - len(token)),
                                    (peer["address"], peer["udp_port"]))
                    except OSError:
                        continue
                    owner[token] = peer["label"]
                    counts[peer["label"]]["loss_sent"] += 1
            drain(sock, owner, seen, time.monotonic() + LOSS_GAP_S)
        drain(sock, owner, seen, min(deadline, time.monotonic() + LOSS_STRAGGLER_S),
              all_of=set(owner))
    for token in seen:
        counts[owner[token]]["loss_echoed"] += 1
    return counts


def probe_peer(source: str, own_mtu: int, peer: dict, deadline: float) -> dict:
    """TCP and the MTU towards one peer, side by side: each may need the whole time budget (a
    dropped SYN, a silently dropped datagram)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        tcp = pool.submit(tcp_probe, source, peer, deadline)
        mtu = pool.submit(mtu_probe, source, own_mtu, peer, deadline)
        return {"peer": peer["label"], "port": peer["tcp_port"], **tcp.result(), **mtu.result()}


def listen(address: str, kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind((address, 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    else:
        dont_fragment(sock)
        # Every peer's loss burst arrives here at once: a queue that overflows while this
        # thread waits for a core would read as loss on the network. Root may pass rmem_max.
        force = getattr(socket, "SO_RCVBUFFORCE", None)
        try:
            sock.setsockopt(socket.SOL_SOCKET, force or socket.SO_RCVBUF, ECHO_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ECHO_BUFFER)
    return sock


def read_command() -> dict | None:
    line = sys.stdin.readline()
    if not line or line.strip() == "done":
        return None
    return json.loads(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--max-s", type=float, default=120, help="exit after this long, always")
    args = parser.parse_args(argv)
    # A watchdog: if the orchestrator vanishes without closing stdin, the agent still goes away.
    watchdog = threading.Timer(args.max_s, os._exit, args=(3,))
    watchdog.daemon = True
    watchdog.start()
    listener = listen(args.address, socket.SOCK_STREAM)
    echo = listen(args.address, socket.SOCK_DGRAM)
    threading.Thread(target=serve_tcp, args=(listener,), daemon=True).start()
    threading.Thread(target=serve_udp, args=(echo,), daemon=True).start()
    mtu = interface_mtu(args.interface, args.mtu)
    emit({"event": "ready", "label": args.label, "tcp_port": listener.getsockname()[1],
          "udp_port": echo.getsockname()[1], "mtu": mtu})
    command = read_command()
    if command is not None:
        deadline = time.monotonic() + float(command.get("budget_s", 5))
        peers = command.get("peers", [])
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(peers))) + 1) as pool:
            lost = pool.submit(loss_bursts, args.address, peers, deadline)
            results = list(pool.map(lambda p: probe_peer(args.address, mtu, p, deadline), peers))
            results = [{**r, **lost.result()[r["peer"]]} for r in results]
        emit({"event": "result", "label": args.label, "mtu": mtu, "peers": results})
        read_command()  # keep serving the other agents' probes until told to stop
    return 0


if __name__ == "__main__":
    sys.exit(main())
