"""One module per family of checks; each check is a small function from facts to CheckResults.

Families and their modules: ssh, resolve, interface, software, resources, clock (this package,
pure functions on probe facts) and mesh, mtu, mpi (active tests between hosts). Every id is
listed with its meaning in its module's docstring.
"""

from __future__ import annotations

import json


def parse_event(line: str) -> dict | None:
    """One JSON event line from a remote agent (mesh, MPI); None for anything else: a login
    banner, mpirun's own chatter."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
