"""The race between subnets that reach the same hosts: what each carries, measured.

Each contender (choice.contenders()) gets the same few host pairs, a burst of TCP each
(agents/burst.py: a receiver on one host, a sender on the other, both over the preflight's
shared ssh connections), one subnet after the other so that they do not share the cores or a
link, the pairs of one subnet at once. The verdict is choice.choose_interface()'s.

Cost: two short sessions per pair and a burst of BURST_S per subnet; about a second per subnet
by default, a few with --bandwidth (longer bursts, more pairs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..agents import parse_event, source
from ..choice import Carried, InterfaceChoice
from ..remote import Session, Ssh, fan_out

AGENT_SOURCE = source("burst")
LAUNCHER = 'p="$1"; shift; [ -x "$p" ] || p=python3; exec "$p" "$@"'  # as active/mesh.py
PAIRS = 2  # pairs measured per subnet by default ...
BANDWIDTH_PAIRS = 4  # ... and with --bandwidth
BURST_S = 0.3  # seconds each sender sends by default: 3.7 MB at 100 Mbit/s ...
BANDWIDTH_BURST_S = 1.5  # ... and with --bandwidth
Say = Callable[[str], None]


def race(ssh: Ssh, rivals: Sequence[InterfaceChoice], python: str, timeout_s: float,
         bandwidth: bool = False, say: Say = lambda _: None) -> list[Carried]:
    """What each subnet in rivals carried between the same pairs of its hosts."""
    hosts = list(rivals[0].addresses)
    pairs = pick_pairs(hosts, BANDWIDTH_PAIRS if bandwidth else PAIRS)
    seconds = BANDWIDTH_BURST_S if bandwidth else BURST_S
    say(f"measuring {len(rivals)} networks that reach every host: "
        f"{', '.join(f'{r.interface} {r.cidr}' for r in rivals)}")
    return [Carried(r.cidr, r.interface or "?", tuple(fan_out(
        pairs, lambda pair, r=r: burst(ssh, pair, r, python, seconds, timeout_s))))
        for r in rivals]


def pick_pairs(hosts: list[str], want: int) -> list[tuple[str, str]]:
    """want (sender, receiver) pairs: disjoint ones first (h1->h2, h3->h4), then the ring's
    (h2->h3, ...) where the hosts are too few, never a pair twice."""
    pairs = [(hosts[i], hosts[i + 1]) for i in range(0, len(hosts) - 1, 2)][:want]
    ring = [(hosts[i], hosts[(i + 1) % len(hosts)]) for i in range(len(hosts))]
    for pair in ring:
        if len(pairs) >= want:
            break
        if pair not in pairs and pair[::-1] not in pairs:
            pairs.append(pair)
    return pairs


def burst(ssh: Ssh, pair: tuple[str, str], net: InterfaceChoice, python: str, seconds: float,
          timeout_s: float) -> dict:
    """One burst from pair[0] to pair[1] over net: {"from", "to", "MBps", "rtt_ms"}, or
    {"from", "to", "error"} saying where it stopped."""
    sender, receiver = pair
    entry = {"from": sender, "to": receiver}
    wait_s = max(2.0, min(5.0, timeout_s / 3))  # a connect: a lost SYN is sent again at 1 s, 3 s
    listener = agent(ssh, receiver, python, ["--listen", net.addresses[receiver],
                                             "--wait-s", f"{wait_s:g}"])
    try:
        ready = event(listener, timeout_s)
        if ready is None or "port" not in ready:
            return {**entry, "error": f"the receiver did not start on {receiver}"}
        target = f"{net.addresses[receiver]}:{ready['port']}"
        talker = agent(ssh, sender, python, ["--to", target, "--source", net.addresses[sender],
                                             "--seconds", f"{seconds:g}", "--wait-s",
                                             f"{wait_s:g}"])
        try:
            sent = event(talker, timeout_s + seconds + wait_s)
        finally:
            talker.end()
        got = event(listener, wait_s + 1)
    finally:
        listener.end()
    return {**entry, **measured(sent, got)}


def measured(sent: dict | None, got: dict | None) -> dict:
    """The rate the receiver saw and the sender's round trip; an error where either failed."""
    for side, result in (("sender", sent), ("receiver", got)):
        if result is None:
            return {"error": f"the {side} gave no answer in time"}
        if "error" in result:
            return {"error": result["error"]}
    if not got.get("seconds") or not got.get("bytes"):
        return {"error": "nothing arrived"}
    return {"MBps": round(got["bytes"] / got["seconds"] / 1e6, 1), "rtt_ms": sent["rtt_ms"]}


def agent(ssh: Ssh, host: str, python: str, args: list[str]) -> Session:
    return ssh.session(host, ["sh", "-c", LAUNCHER, "sh", python, "-c", AGENT_SOURCE, *args])


def event(session: Session, within_s: float) -> dict | None:
    """The agent's next JSON event; None when it ended or took longer than within_s."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            line = session.read_line(deadline)
        except TimeoutError:
            return None
        if line is None:
            return None
        found = parse_event(line)
        if found is not None:
            return found
