"""Fault isolation: which members of a group that fails together fail on their own.

Halving: both halves of a failing group run at once, and each half that still fails is halved
again, down to single members, while time is left. k culprits among n cost about 2k log2(n)
runs in log2(n) rounds; a group that passes costs nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol, TypeVar

from .. import proc
from ..remote import fan_out


class Tried(Protocol):
    ok: bool
    run: proc.Ran


T = TypeVar("T")
A = TypeVar("A", bound=Tried)


def halve(members: Sequence[T], attempt: Callable[[list[T]], A], deadline: float,
          min_left_s: float, key: Callable[[T], Hashable] = lambda m: m) -> dict[Hashable, A]:
    """{key(member): its own failed attempt} for the members that fail alone. A round starts
    only with min_left_s to go, and a member's run cut off at the time limit proves nothing."""
    culprits: dict[Hashable, A] = {}
    groups = [list(members)]
    while groups and deadline - time.monotonic() >= min_left_s:
        halves = [part for group in groups
                  for part in (group[:len(group) // 2], group[len(group) // 2:]) if part]
        tried = fan_out(halves, attempt)
        groups = [part for part, a in zip(halves, tried) if not a.ok and len(part) > 1]
        culprits.update({key(part[0]): a for part, a in zip(halves, tried)
                         if not a.ok and len(part) == 1 and a.run.stopped != "timeout"})
    return culprits
