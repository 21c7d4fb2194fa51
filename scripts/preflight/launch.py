"""What `make train` needs from a preflight report: whether it vouches for a hostfile, and the
process count and interface to hand to horovodrun.

    python -m preflight.launch vouches  --report R --hostfile H   # exit 0 if R wrote H as it is
    python -m preflight.launch settings --report R --hostfile H [--np N] [--gloo]
                                                               # prints "NP IFACE"
    python -m preflight.launch explain  --log L --hostfile H   # why a job failed: rank, host

Errors are one line that names the problem and the fix, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path


class LaunchError(Exception):
    """Bad input for a launch: the message names the problem and the fix."""


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_report(report: Path) -> dict:
    if not report.is_file():
        raise LaunchError(f"{report} does not exist: run make preflight first")
    try:
        return json.loads(report.read_text())
    except json.JSONDecodeError as exc:
        raise LaunchError(f"{report} is not valid JSON ({exc}): run make preflight again") from exc


def hostfile_slots(hostfile: Path) -> int:
    """Total slots of an Open MPI hostfile ('host slots=N' lines)."""
    if not hostfile.is_file():
        raise LaunchError(f"hostfile {hostfile} does not exist: run make preflight, or give "
                          f"HOSTFILE=path of an existing file")
    total = 0
    for line in hostfile.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        slots = [w.split("=", 1)[1] for w in words[1:] if w.startswith("slots=")]
        total += int(slots[0]) if slots and slots[0].isdigit() else 1
    if total == 0:
        raise LaunchError(f"hostfile {hostfile} lists no hosts: add 'host slots=N' lines or run "
                          f"make preflight")
    return total


def vouches(report: dict, hostfile: Path) -> bool:
    """True if the report wrote this hostfile, byte for byte (its hash is in the provenance)."""
    want = report.get("provenance", {}).get("hostfile_sha256")
    return bool(want) and hostfile.is_file() and file_sha256(hostfile) == want


def settings(report: dict, hostfile: Path, np_override: int | None,
             gloo: bool = False) -> tuple[int, str]:
    """The process count and what horovodrun's --network-interfaces gets."""
    slots = hostfile_slots(hostfile)
    if not vouches(report, hostfile):
        raise LaunchError(f"the preflight report does not vouch for {hostfile} (it was changed "
                          f"or written elsewhere): run make preflight INVENTORY={hostfile}")
    interface = network_interfaces(report, gloo)
    np = slots if np_override is None else np_override
    if np < 1:
        raise LaunchError(f"NP={np} must be at least 1")
    if np > slots:
        raise LaunchError(f"NP={np} is more than the {slots} slots in {hostfile}: lower NP or "
                          f"add hosts/slots to the inventory and run make preflight")
    return np, interface


def network_interfaces(report: dict, gloo: bool) -> str:
    """The interface's name; where hosts name it differently (eth0 here, ens5 there), the
    subnet. horovodrun hands the value to Open MPI's btl_tcp_if_include, which takes a subnet
    and, given a list of names, hangs on a host that lacks one of them. Gloo (elastic runs)
    takes a single name for every host, so differing names cannot go there."""
    interface, cidr = report.get("interface"), report.get("interface_cidr")
    if not interface:
        raise LaunchError("the preflight report names no interface: run make preflight again")
    if "," not in interface:
        return interface
    if gloo:
        raise LaunchError(f"the hosts name the job's interface differently ({interface}), and "
                          f"Horovod's Gloo takes one name for all: give it the same name on "
                          f"every host, or train without ELASTIC=1")
    if not cidr:
        raise LaunchError("the preflight report names no subnet: run make preflight again")
    return cidr


# What mpirun prints about the first process that failed.
KILLED_RE = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)"
                       r"(?: \(([^)]+)\))?")
EXITED_RE = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*Exit code:\s*(\d+)")
RUN_DIR_RE = re.compile(r"run directory ([^\s\[]+)")  # mpirun may glue a "[1,0]<stdout>:" on


def rank_hosts(hostfile: Path) -> list[str]:
    """Host of each rank as mpirun places them by default: slots filled in hostfile order."""
    hosts: list[str] = []
    for line in hostfile.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            slots = [w.split("=", 1)[1] for w in words[1:] if w.startswith("slots=")]
            hosts += [words[0]] * (int(slots[0]) if slots and slots[0].isdigit() else 1)
    return hosts


def explain_failure(log: str, hostfile: Path) -> str:
    """One line: which rank on which host failed first, and where the last checkpoint is."""
    placed = rank_hosts(hostfile) if hostfile.is_file() else []
    if m := KILLED_RE.search(log):
        rank, host = int(m.group(1)), m.group(2)
        why = f"was killed by signal {m.group(3)}" + (f" ({m.group(4)})" if m.group(4) else "")
    elif m := EXITED_RE.search(log):
        rank = int(m.group(1))
        host = placed[rank] if rank < len(placed) else "?"
        why = f"exited with code {m.group(2)}"
    else:
        return "the job failed before naming a rank; see the output above"
    text = f"rank {rank} on {host} {why}"
    if (run := RUN_DIR_RE.search(log)) and (ckpts := sorted(Path(run.group(1)).glob(
            "checkpoints/epoch-*.h5"))):
        text += f"; last checkpoint {ckpts[-1]}; continue with: make train RESUME={run.group(1)}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preflight.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["vouches", "settings", "explain"])
    parser.add_argument("--report", type=Path, default=Path("preflight.json"))
    parser.add_argument("--log", type=Path, help="the job's output (explain)")
    parser.add_argument("--hostfile", type=Path, required=True)
    parser.add_argument("--np", type=int, default=None, help="process count instead of all slots")
    parser.add_argument("--gloo", action="store_true",
                        help="settings for a Gloo (elastic) run: one interface name for all")
    args = parser.parse_args(argv)
    if args.action == "explain":
        log = args.log.read_text(errors="replace") if args.log else sys.stdin.read()
        print(f"make train: {explain_failure(log, args.hostfile)}", file=sys.stderr)
        return 0
    try:
        report = load_report(args.report)
        if args.action == "vouches":
            return 0 if vouches(report, args.hostfile) else 1
        np, interface = settings(report, args.hostfile, args.np, args.gloo)
    except LaunchError as exc:
        print(f"make train: {exc}", file=sys.stderr)
        return 2
    print(np, interface)
    return 0


if __name__ == "__main__":
    sys.exit(main())
