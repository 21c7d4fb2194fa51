"""The state file of a built cluster, <state dir>/state.json, and its one reader.

`up` writes state.json last, so its presence means the cluster was completely built. It holds
the options the cluster was built with, each host's name, address, interface and namespace, and
the faults that are on. The other files in the state directory are the ones ssh and sshd read
(keys, known_hosts, ssh_config, hN/sshd_config) or write (hN/sshd.pid, hN/sshd.log), and, for a
cluster built with --slurm (options.slurm), Slurm's and munge's under slurm/ (see slurm.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .options import UpOptions
from .settings import Settings, host_address

STATE_FILE = "state.json"
# Marks a state directory as made by this tool for this prefix, so `down` may delete it whole.
MARKER = ".hvsim-state"
VERSION = 1


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    ifname: str
    namespace: str


@dataclass
class State:
    """A built cluster as recorded in state.json."""

    prefix: str
    options: UpOptions
    hosts: list[Host]
    faults: dict[str, str] = field(default_factory=dict)  # 'h2 loss' -> '20' ('' if no value)

    @classmethod
    def new(cls, settings: Settings, options: UpOptions) -> State:
        hosts = [Host(h, host_address(i), options.ifname_of(h), settings.host_ns(h))
                 for i, h in enumerate(options.names, start=1)]
        return cls(settings.prefix, options, hosts)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def host(self, name: str) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    def fault_lines(self) -> list[str]:
        """'fault: h2 loss on (20)', in host then kind order."""
        return [f"fault: {key} on" + (f" ({value})" if value else "")
                for key, value in sorted(self.faults.items(), key=lambda kv: _fault_order(kv[0]))]

    def to_json(self) -> dict:
        return {"version": VERSION, "prefix": self.prefix, "options": self.options.to_json(),
                "hosts": [vars(h) for h in self.hosts],
                "faults": [{"host": k.split()[0], "kind": k.split()[1], "value": v}
                           for k, v in self.faults.items()]}

    @classmethod
    def from_json(cls, doc: dict) -> State:
        return cls(doc["prefix"], UpOptions.from_json(doc["options"]),
                   [Host(**h) for h in doc["hosts"]],
                   {f"{f['host']} {f['kind']}": f["value"] for f in doc["faults"]})


def _fault_order(key: str) -> tuple[int, str]:
    host, kind = key.split()
    return int(host[1:]), kind


def read_state(settings: Settings) -> State | None:
    """The recorded cluster, or None when none was completely built."""
    try:
        doc = json.loads((settings.state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    return State.from_json(doc)


def write_state(settings: Settings, state: State) -> None:
    """Through a temporary file and a rename, so a reader never sees half a file."""
    path = settings.state_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.chmod(tmp, 0o644)
    tmp.replace(path)


def mark_ours(settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.state_dir.chmod(0o755)
    (settings.state_dir / MARKER).write_text(settings.prefix + "\n")


def state_is_ours(settings: Settings) -> bool:
    """Made by this tool for this prefix (an empty marker is from an older version: ours too)."""
    try:
        owner = (settings.state_dir / MARKER).read_text().splitlines()
    except OSError:
        return False
    return not owner or owner[0] in ("", settings.prefix)


def dir_is_foreign(settings: Settings) -> bool:
    """A non-empty state directory that is not ours: never deleted, never built into."""
    path = settings.state_dir
    return path.is_dir() and any(path.iterdir()) and not state_is_ours(settings)
