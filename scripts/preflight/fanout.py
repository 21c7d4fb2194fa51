"""How many hosts are probed at once: as many as the launcher and the network absorb.

A fixed number is wrong both ways. Where each answer takes a fraction of a second (hosts that
do their work on their own cores), more at once only adds throughput; where the launcher or
the hosts' shared cores are saturated, more at once adds only waiting, until answers run into
the per-host timeout and healthy hosts look dead. So the window follows the answer times: it
grows while the recent answers take under GROW_BELOW of the timeout, and shrinks once they take
over SHRINK_ABOVE of it. Each host's timeout starts when its probe starts, never while it
waits for a place in the window.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

START = 16
SMALLEST = 4
GROW_BELOW = 0.125  # of the timeout: answers this quick mean the launcher has room
SHRINK_ABOVE = 0.25  # of the timeout: answers this slow are a queue, not the hosts
RECENT = 8  # answers the window is judged on


class Window:
    """The number of probes in flight, adapted to the recent answer times."""

    def __init__(self, timeout_s: float, largest: int) -> None:
        self.timeout_s = timeout_s
        self.largest = max(SMALLEST, largest)
        self.size = min(START, self.largest)
        self.recent: list[float] = []
        self.sizes = [self.size]  # every size it took, for the report

    def answered(self, seconds: float) -> None:
        self.recent = [*self.recent[-(RECENT - 1):], seconds]
        if len(self.recent) < min(RECENT, self.size):
            return
        typical = statistics.median(self.recent)
        if typical < GROW_BELOW * self.timeout_s:
            self.size = min(self.largest, self.size + max(1, self.size // 4))
        elif typical > SHRINK_ABOVE * self.timeout_s:
            self.size = max(SMALLEST, self.size * 3 // 4)
        else:
            return
        self.recent = []
        self.sizes.append(self.size)


def start_all(names: list[str], attempt: Callable[[str], object], window: Window,
              pool: ThreadPoolExecutor, took: Callable[[object], float],
              on_answer: Callable[[int], None] = lambda _done: None
              ) -> tuple[dict[str, Future], dict[str, float]]:
    """Starts attempt(name) for every name, no more at once than the window allows; returns
    once all have started, with each one's future and start time (time.monotonic())."""
    futures: dict[str, Future] = {}
    started: dict[str, float] = {}
    queue = list(names)
    running: set[Future] = set()
    answered = 0
    while queue:
        while queue and len(running) < window.size:
            name = queue.pop(0)
            started[name] = time.monotonic()
            futures[name] = pool.submit(attempt, name)
            running.add(futures[name])
        done, running = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            if future.exception() is None:
                window.answered(took(future.result()))
        answered += len(done)
        on_answer(answered)
    return futures, started
