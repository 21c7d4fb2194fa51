"""loss.path: how many small datagrams the paths between the hosts lose, at random.

The mesh agents (active/mesh.py) send up to 16 peers each a paced burst of small UDP datagrams
to its echo and count what comes back: a round trip crosses both hosts' links, so a host whose
cable, NIC or switch port loses packets shows on every pair it is on. The host explaining the
loss is found by peeling: the host with the highest loss over its pairs is taken, its pairs set
aside, and the others judged on what is left (a healthy host's only lossy pair is the one with
the bad host).

Thresholds, from what loss does to an allreduce over TCP: a lost segment with more data behind
it is resent within a round trip, but one near the end of a message (no duplicate ACKs follow)
waits for the retransmission timeout, at least 200 ms on Linux. A ring allreduce over N hosts is
2(N-1) steps in lockstep, each ending in such a tail, so with loss p per packet each step stalls
with a chance of about 3p, and the whole ring waits. At p = 1% over 16 hosts that is about one
200 ms stall per allreduce, where 8 MiB on a 10 Gbit/s link takes 15 ms: the job runs several
times slower (FAIL). At 0.1%, one stall every ten allreduces or so: tens of percent (WARN).
Fewer than MIN_LOST lost probes prove nothing either way on a busy machine.

Ids:
- `loss.path`: small UDP datagrams between the host and every other on the chosen interface
  come back; a host that loses 1% or more fails, 0.1% or more warns, with the rate, the peers
  and a remedy about the cable, NIC or switch port.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..result import CheckResult, failed, passed, skipped, warned
from .mesh import MeshHost, PeerProbe, not_measured

FAMILY = "loss"
CHECK_ID = "loss.path"
IDS = (CHECK_ID,)
STAGE = "active"
WARN_RATE = 0.001
FAIL_RATE = 0.01
MIN_LOST = 3


@dataclass(frozen=True)
class Count:
    """Small datagrams sent and lost on a pair (both directions) or over a host's pairs."""

    sent: int = 0
    lost: int = 0

    def __add__(self, other: Count) -> Count:
        return Count(self.sent + other.sent, self.lost + other.lost)

    @property
    def rate(self) -> float:
        return self.lost / self.sent if self.sent else 0.0

    def text(self) -> str:
        return f"{self.lost:,} of {self.sent:,} ({100 * self.rate:.1f}%)"


def pair_counts(probes: Iterable[PeerProbe]) -> dict[frozenset[str], Count]:
    pairs: dict[frozenset[str], Count] = {}
    for p in probes:
        if p.loss_sent:
            pair = frozenset((p.src, p.dst))
            pairs[pair] = pairs.get(pair, Count()) + Count(p.loss_sent, p.loss_sent - p.loss_echoed)
    return pairs


def over(host: str, pairs: Mapping[frozenset[str], Count], without: set[str]) -> Count:
    """The host's count over its pairs, leaving out those with hosts already blamed."""
    total = Count()
    for pair, count in pairs.items():
        if host in pair and not (pair - {host}) & without:
            total += count
    return total


def lossy(count: Count, rate: float = WARN_RATE) -> bool:
    return count.lost >= MIN_LOST and count.rate >= rate


def culprits(hosts: list[str], pairs: Mapping[frozenset[str], Count]) -> dict[str, Count]:
    """The hosts that explain the loss (peeling, see the module's docstring), with their
    counts over the pairs that do not involve another culprit."""
    found: dict[str, Count] = {}
    while True:
        counts = {h: over(h, pairs, set(found)) for h in hosts if h not in found}
        worst = max(counts, key=lambda h: (counts[h].rate, counts[h].lost), default=None)
        if worst is None or not lossy(counts[worst]):
            return found
        found[worst] = counts[worst]


def loss_results(hosts: Iterable[MeshHost], probes: Iterable[PeerProbe],
                 not_started: Mapping[str, str]) -> dict[str, CheckResult]:
    hosts = list(hosts)
    pairs = pair_counts(p for p in probes
                        if p.src not in not_started and p.dst not in not_started)
    names = [h.name for h in hosts if h.name not in not_started]
    blamed = culprits(names, pairs)
    results: dict[str, CheckResult] = {}
    for host in hosts:
        if host.name in not_started:
            results[host.name] = not_measured(CHECK_ID)
        elif host.name in blamed:
            results[host.name] = loss_verdict(host, blamed[host.name], pairs, blamed)
        else:
            results[host.name] = loss_pass(host, pairs, set(blamed))
    return results


def worst_peers(host: str, pairs: Mapping[frozenset[str], Count], shown: int = 4) -> str:
    rows = sorted(((next(iter(pair - {host})), c) for pair, c in pairs.items() if host in pair),
                  key=lambda row: -row[1].rate)
    text = ", ".join(f"{peer} {100 * c.rate:.0f}%" for peer, c in rows[:shown])
    return text + (f" and {len(rows) - shown} more" if len(rows) > shown else "")


def loss_verdict(host: MeshHost, count: Count, pairs: Mapping[frozenset[str], Count],
                 blamed: Mapping[str, Count]) -> CheckResult:
    others = [h for h in {n for pair in pairs for n in pair} if h not in blamed]
    rest = Count()
    for pair, c in pairs.items():
        if pair <= set(others):
            rest += c
    detail = (f"{count.text()} small UDP round trips between {host.name} and its peers on "
              f"{host.interface} were lost ({worst_peers(host.name, pairs)}), against "
              f"{rest.text()} among the other hosts: {host.name}'s link loses packets at random")
    remedy = (f"check {host.name}'s cable, NIC and switch port: ip -s link show "
              f"{host.interface} and ethtool -S {host.interface} (errors, drops, CRC) on "
              f"{host.name}, then reseat or swap the cable or port; TCP stalls 200 ms on a lost "
              f"tail packet, so the job would wait on it")
    if count.rate >= FAIL_RATE:
        return failed(CHECK_ID, detail, remedy)
    return warned(CHECK_ID, detail, remedy)


def loss_pass(host: MeshHost, pairs: Mapping[frozenset[str], Count], blamed: set[str]
              ) -> CheckResult:
    count = over(host.name, pairs, blamed)
    if not count.sent:
        return skipped(CHECK_ID, "no loss probes: no peer measured")
    detail = (f"{count.text()} small UDP round trips lost with "
              f"{sum(1 for p in pairs if host.name in p and not (p - {host.name}) & blamed)} "
              f"peer(s) on {host.interface}")
    if blamed:
        detail += f"; {', '.join(sorted(blamed))} {'fails' if len(blamed) == 1 else 'fail'} " \
                  f"this check"
    return passed(CHECK_ID, detail)
