"""Fault isolation for every group step: which members of a group that failed are behind it.

The method reads no error message; it only asks "does this group pass?" of smaller groups:

1. Alone: every member runs with the launcher only (a group of one), in parallel batches. A
   member that fails alone by running out of time is tried once more, alone, after the
   batch (the crowd gone), with a longer budget: passing then makes it slow, not faulty.
2. Every member failing alone (two or more) puts the fault on the launcher, the one part they
   share; it is the only way the launcher is blamed.
3. The members that passed alone run together again. If that still fails and the run points at
   some members (a step's own account, such as the pairs that never connected), the others run
   together and each suspect with them, all at once: suspects that fail with others that pass
   are the culprits. Failing that, the group is halved and both halves run; a failing half is
   halved again. When both halves of a failing group pass, the fault lies between them: each
   of their members runs with a group known to pass, and those that fail there are the
   culprits; failing that (a bad link between two hosts), each runs with the other half, and
   the side with fewer failing holds the culprits (one end of the link, not both).

Cost: n runs of one member (in batches), then about 2k log2(n) runs for k faults that only show
in company (n more where a fault lies between two halves); a group that passes costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .. import proc
from ..remote import fan_out


class Tried(Protocol):
    ok: bool
    run: proc.Ran


T = TypeVar("T")
A = TypeVar("A", bound=Tried)
BATCH = 8  # runs of one member at once: each starts processes on the launcher's few cores
CONFIRM_AT_ONCE = 2  # timeouts are confirmed nearly alone: the crowd is what slowed them


@dataclass(frozen=True)
class Verdict(Generic[A]):
    """A member found at fault: the run that shows it, and how it was narrowed (a phrase that
    completes "<member> ...", e.g. "failed alone with the launcher")."""

    attempt: A
    how: str


@dataclass
class Isolation(Generic[A]):
    """What isolation found. `final` is the group run without the culprits (None when none
    was run); `slow` holds members that passed only when tried again alone, with the seconds
    that took; `launcher` is set (to one of the failed runs) when every member failed alone."""

    culprits: dict[Hashable, Verdict[A]] = field(default_factory=dict)
    slow: dict[Hashable, float] = field(default_factory=dict)
    launcher: A | None = None
    final: A | None = None
    alone: dict[Hashable, A] = field(default_factory=dict)  # the passing runs of one member


@dataclass(frozen=True)
class Budget:
    """Time for isolation: its deadline, the least time worth starting a run with, and the time
    limit of one run alone and of its confirmation."""

    deadline: float
    min_left_s: float
    alone_s: float
    confirm_s: float

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self) -> bool:
        return self.left() >= self.min_left_s

    def cap(self, seconds: float) -> float:
        return max(0.0, min(seconds, self.left()))


Attempt = Callable[[list[T], float], A]  # (group, time limit in s) -> the run


def isolate(members: Sequence[T], attempt: Attempt, budget: Budget,
            key: Callable[[T], Hashable] = lambda m: m,
            hint: Callable[[A], Sequence[Hashable]] | None = None) -> Isolation:
    """Finds the members behind a group failure (see the module's docstring). hint(failed
    run): the members a failed group run points at (a step's own account, e.g. the pairs that
    never connected), tried first; a hint is only a guess until runs confirm it."""
    found: Isolation = Isolation()
    alone = alone_round(list(members), attempt, budget, key, found)
    if len(members) > 1 and not alone:
        return found
    rest = [m for m in members if key(m) in alone]
    if len(rest) == 1:
        found.final = alone[key(rest[0])]
    if len(rest) < 2 or not budget.allows():
        return found
    together = attempt(rest, budget.left())
    if together.ok:
        found.final = together
        return found
    guessed, company = suspected(rest, together, attempt, budget, key, hint) if hint \
        else ({}, None)
    if guessed:
        found.culprits.update(guessed)
        found.final = company  # the others' own run, which passed
        return found
    found.culprits.update(split(rest, together, attempt, budget, key, hint))
    left_over = [m for m in rest if key(m) not in found.culprits]
    if found.culprits and left_over and budget.allows():
        found.final = attempt(left_over, budget.left())
    return found


def alone_round(members: list[T], attempt: Attempt, budget: Budget,
                key: Callable[[T], Hashable], found: Isolation) -> dict[Hashable, Tried]:
    """Step 1 and 2: the members that pass alone, by key, with that run (also kept in
    found.alone); the others go to found.culprits (or found.launcher when none passes)."""
    tried = fan_out(members, lambda m: attempt([m], budget.cap(budget.alone_s)),
                    max_workers=BATCH)
    late = [(m, a) for m, a in zip(members, tried) if not a.ok and a.run.timed_out]
    again = dict(zip([key(m) for m, _ in late], fan_out(
        [m for m, _ in late], lambda m: attempt([m], budget.cap(budget.confirm_s)),
        max_workers=CONFIRM_AT_ONCE)))
    passed = found.alone
    failures: dict[Hashable, Verdict] = {}
    for member, first in zip(members, tried):
        name = key(member)
        second = again.get(name)
        if first.ok or (second is not None and second.ok):
            passed[name] = first if first.ok else second
            if not first.ok:
                found.slow[name] = second.run.seconds
        elif second is not None:
            failures[name] = Verdict(second, f"failed alone with the launcher twice (the "
                                             f"second time after the others, given "
                                             f"{budget.confirm_s:.0f} s)")
        else:
            failures[name] = Verdict(first, "failed alone with the launcher")
    if len(members) > 1 and not passed:
        found.launcher = next(iter(failures.values())).attempt
        return passed
    others = len(passed)
    for name, verdict in failures.items():
        found.culprits[name] = Verdict(verdict.attempt, f"{verdict.how}; the other {others} "
                                       f"passed alone" if others else verdict.how)
    return passed


def suspected(group: list[T], failed: A, attempt: Attempt, budget: Budget,
              key: Callable[[T], Hashable], hint: Callable[[A], Sequence[Hashable]]
              ) -> tuple[dict[Hashable, Verdict], A | None]:
    """The members a failed run points at, confirmed: the others run together and, at the same
    time, each suspect with them; when the others pass, the suspects that fail with them are
    the culprits. Also the others' run. Nothing when the others fail too or no suspect does."""
    named = set(hint(failed))
    suspects = [m for m in group if key(m) in named]
    company = [m for m in group if key(m) not in named]
    if not suspects or not company or not budget.allows():
        return {}, None
    runs = fan_out([company, *([s, *company] for s in suspects)],
                   lambda g: attempt(g, budget.left()), max_workers=BATCH)
    if not runs[0].ok:
        return {}, None
    others = ", ".join(str(key(m)) for m in company)
    return {key(s): Verdict(a, f"passed alone but failed together with {others}, which pass "
                               f"together") for s, a in zip(suspects, runs[1:]) if not a.ok}, \
        runs[0]


def split(group: list[T], failed: A, attempt: Attempt, budget: Budget,
          key: Callable[[T], Hashable], hint: Callable[[A], Sequence[Hashable]] | None = None
          ) -> dict[Hashable, Verdict]:
    """Step 3: culprits of a group whose members each pass alone, by halving, level by level
    (every failing group of a level is halved at once). Groups that pass are kept as company
    known to be good, to try the members of two halves that only fail together with."""
    culprits: dict[Hashable, Verdict] = {}
    failing, good = [group], []
    while failing and budget.allows():
        halves = [(g[:len(g) // 2], g[len(g) // 2:]) for g in failing]
        parts = [part for pair in halves for part in pair]
        runs = dict(zip(map(id, parts), fan_out(parts, lambda p: attempt(p, budget.left()))))
        good += [p for p in parts if runs[id(p)].ok and len(p) > 1]  # alone proves no company
        failing = []
        for first, second in halves:
            failing += [p for p in (first, second) if not runs[id(p)].ok and len(p) > 1]
            if all(runs[id(p)].ok for p in (first, second)) and budget.allows():
                company = max((g for g in good if not {*map(key, g)} & {*map(key, first),
                                                                        *map(key, second)}),
                              key=len, default=[])
                culprits.update(between(first, second, company, attempt, budget, key, hint))
    return culprits


def between(first: list[T], second: list[T], company: list[T], attempt: Attempt,
            budget: Budget, key: Callable[[T], Hashable],
            hint: Callable[[A], Sequence[Hashable]] | None = None) -> dict[Hashable, Verdict]:
    """Two groups that pass apart and fail together. Each of their members joins company known
    to be good: those that fail there are the culprits. Where none does (or there is no such
    company), each member joins the whole other group instead, and the side with fewer members
    failing holds the culprits; on a tie, the side the failed runs point at more often (hint),
    else the first: for one bad link, one end is taken and the other kept."""
    members = [*first, *second]
    if company:
        tried = fan_out(members, lambda m: attempt([m, *company], budget.left()),
                        max_workers=BATCH)
        others = ", ".join(str(key(m)) for m in company)
        found = {key(m): Verdict(a, f"passed alone but failed together with {others}, which "
                                    f"pass together") for m, a in zip(members, tried) if not a.ok}
        if found or not budget.allows():
            return found
    joined = [(m, other) for own, other in ((first, second), (second, first)) for m in own]
    tried = fan_out(joined, lambda job: attempt([job[0], *job[1]], budget.left()),
                    max_workers=BATCH)
    failing = [[(m, other, a) for (m, other), a in zip(joined, tried)
                if not a.ok and other is side] for side in (second, first)]
    pointed = [sum(key(m) in (hint(a) if hint else ()) for m, _, a in side) for side in failing]
    fewest = min((side for side in (0, 1) if failing[side]),
                 key=lambda side: (len(failing[side]), -pointed[side]), default=None)
    fewest = failing[fewest] if fewest is not None else []
    return {key(m): Verdict(a, f"passed alone and with other hosts but failed together with "
                               f"{', '.join(str(key(o)) for o in other)}")
            for m, other, a in fewest}
