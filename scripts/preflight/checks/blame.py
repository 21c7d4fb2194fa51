"""Who gets the blame for failing pairs of hosts: the odd one out, not everyone.

Shared by the pairwise verdicts (mesh.tcp, mtu.path, mpi.*); not a family of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping


def blame(pairs: Iterable[frozenset[str]], tiebreak: Mapping[str, Hashable] | None = None
          ) -> set[str]:
    """The hosts to put failing pairs on: the odd one out, not everyone.

    Repeatedly takes the host in the most failing pairs (h2 in h1-h2 and h2-h3), drops the
    pairs it explains, and goes on with what is left. Hosts tied for most go together, unless
    the tiebreak (higher wins) separates them; with no winner, all of them are named.
    """
    remaining = {frozenset(p) for p in pairs}
    culprits: set[str] = set()
    while remaining:
        degree = Counter(host for pair in remaining for host in pair)
        most = max(degree.values())
        tied = sorted(h for h, d in degree.items() if d == most)
        if tiebreak and len(tied) > 1:
            best = max(tiebreak.get(h, 0) for h in tied)
            tied = [h for h in tied if tiebreak.get(h, 0) == best]
        culprits.update(tied)
        remaining = {p for p in remaining if not p & culprits}
    return culprits
