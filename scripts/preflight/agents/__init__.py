"""The programs sent to hosts as source text, and how their output is read here.

`host_probe.py` (one look at a host: facts as one JSON object), `mesh_agent.py` (TCP and MTU to
every other host) and `mpi_probe.py` (one rank under mpirun) travel over ssh or mpirun as text
and run with whatever Python the host has: each must stand alone, with the standard library only
(the host probe also uses psutil where the host's venv has it, the MPI probe mpi4py).
`horovod_probe.py` (--deep) is started by horovodrun from its path and imports TensorFlow and
Horovod on purpose: the venv is what it tests. None of these files may import from the
preflight package. This package's own code runs here: it reads their files and their JSON
event lines.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def source(name: str) -> str:
    """The text of an agent (`host_probe`, `mesh_agent`, `mpi_probe`), to send to a host."""
    return (HERE / f"{name}.py").read_text()


def path(name: str) -> Path:
    return HERE / f"{name}.py"


def parse_event(line: str) -> dict | None:
    """One JSON event line from an agent (mesh, MPI); None for anything else: a login banner,
    mpirun's own chatter. What follows the object is ignored: mpirun's --tag-output may glue
    the next line's tag to it."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event, _ = json.JSONDecoder().raw_decode(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
