"""Host discovery for horovodrun's elastic mode (make train ELASTIC=1): preflight the job's
inventory and print each healthy host as a `host:slots` line, the format
--host-discovery-script expects. horovodrun runs scripts/discover_hosts.sh (which runs
`python -m preflight.discover`) on the launcher about once a second; a host missing from the
output is dropped from the job, a host that reappears joins it.

Environment (make train sets them): DISCOVER_HOSTS ('h1:2,h2:2') or DISCOVER_INVENTORY (a
hostfile) name the inventory, neither: this machine; DISCOVER_TIMEOUT (seconds per step and
host, default 5) bounds how long a dead host holds up one round; DISCOVER_STATE (a file for the
last list, so that a change is reported once); DISCOVER_EVERY (seconds, default 5): within this
time of the last round the last list is the answer.

Stdout carries the host lines and nothing else (the preflight's words go to stderr). Exit 0
also when some or all hosts are out: horovodrun takes a failing discovery for a broken job.
Exit 2 for bad input, which horovodrun reports at once when it is the first round; 3 when the
preflight failed and there is no earlier answer to give.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from . import inventory as inv
from .errors import Exit, UserError, render
from .proc import Ran, run
from .report import read_report, write_atomic

PROG = "discover_hosts"
DEFAULT_EVERY_S = 5.0
DEFAULT_TIMEOUT_S = "5"
# A round's steps are each bounded by DISCOVER_TIMEOUT; this bounds the whole round, so that a
# preflight that hangs counts as a failed round (the last answer stands) instead of holding
# horovodrun's discovery up for ever.
ROUND_LIMIT_S = 60.0
ROUND_LIMIT_PER_TIMEOUT = 10


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m preflight.discover", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(argv)
    try:
        return discover(os.environ)
    except UserError as error:
        return render(PROG, error)


def discover(env: Mapping[str, str], preflight: Sequence[str] | None = None,
             out: TextIO | None = None, err: TextIO | None = None) -> int:
    """One answer for horovodrun. preflight: the command that runs the preflight (default:
    this Python's `-m preflight`)."""
    out, err = out or sys.stdout, err or sys.stderr
    state = Path(env["DISCOVER_STATE"]) if env.get("DISCOVER_STATE") else None
    # horovodrun asks about once a second, and a round (ssh to every host, a probe on each)
    # takes a good part of a core from the training on this host; a host that dies mid-run is
    # dropped by horovodrun itself (its processes fail), so a list a few seconds old does no
    # harm.
    if state is not None and fresh(state, every_s(env)):
        out.write(state.read_text())
        return Exit.OK
    with tempfile.TemporaryDirectory(prefix="discover-") as work:
        hostfile, report = Path(work) / "hostfile", Path(work) / "report.json"
        ran = run_preflight(env, preflight, hostfile, report)
        # 0 all healthy, 1 some out (no hostfile if none is healthy); anything else, or no
        # report, and the round says nothing about the hosts: the last answer stands (bad input
        # excepted), rather than an empty list that would make horovodrun stop every process.
        if ran.returncode not in (Exit.OK, Exit.SOME_OUT) or ran.timed_out \
                or not report.is_file():
            err.write(ran.stdout + ran.stderr + (f"{PROG}: the preflight took over "
                                                 f"{ran.limit_s:g} s\n" if ran.timed_out else ""))
            if ran.returncode != Exit.BAD_INPUT and state is not None and state.is_file():
                out.write(state.read_text())
                return Exit.OK
            return ran.returncode if ran.returncode > 1 and not ran.timed_out else Exit.CRASHED
        hosts = inv.discovery_text(inv.read_hostfile(hostfile)) if hostfile.is_file() else ""
        out.write(hosts)
        out.flush()
        if state is None:
            return Exit.OK
        # When the list changes, say on stderr which hosts are out and the first check each
        # failed: the job's output then shows why a host dropped.
        if not state.is_file() or state.read_text() != hosts:
            for line in why_out(report):
                err.write(f"{PROG}: {line}\n")
        try:
            write_atomic(state, hosts.encode())  # its time: the last round's
        except OSError as exc:
            err.write(f"{PROG}: cannot keep the answer in DISCOVER_STATE={state} ({exc})\n")
    return Exit.OK


def every_s(env: Mapping[str, str]) -> float:
    text = env.get("DISCOVER_EVERY") or ""
    if not text:
        return DEFAULT_EVERY_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserError(f"DISCOVER_EVERY={text} must be a number of seconds (0 or more)",
                        "e.g. DISCOVER_EVERY=5, or leave it out")
    return value


def fresh(state: Path, every: float) -> bool:
    """The last answer is younger than DISCOVER_EVERY."""
    try:
        return time.time() - state.stat().st_mtime < every
    except OSError:
        return False


def run_preflight(env: Mapping[str, str], preflight: Sequence[str] | None, hostfile: Path,
                  report: Path) -> Ran:
    """The preflight over the job's inventory, without the MPI test (the slowest step, and
    Gloo, not MPI, carries an elastic job) and with its summary kept back (horovodrun passes
    stderr through, and a line a second would bury the training's)."""
    if env.get("DISCOVER_INVENTORY"):
        inventory = ["--inventory", env["DISCOVER_INVENTORY"]]
    elif env.get("DISCOVER_HOSTS"):
        inventory = ["--hosts", env["DISCOVER_HOSTS"]]
    else:
        inventory = []
    timeout = env.get("DISCOVER_TIMEOUT") or DEFAULT_TIMEOUT_S
    argv = [*(preflight or [sys.executable, "-m", "preflight"]), *inventory, "--no-mpi",
            "--elastic", "--quiet", "--timeout", timeout, "--hostfile", str(hostfile),
            "--report", str(report)]
    return run(argv, round_limit_s(timeout), env=env)


def round_limit_s(timeout: str) -> float:
    try:
        step = float(timeout)
    except ValueError:
        step = float(DEFAULT_TIMEOUT_S)  # the preflight refuses it at once
    return ROUND_LIMIT_S + ROUND_LIMIT_PER_TIMEOUT * max(step, 0.0)


def why_out(report: Path) -> list[str]:
    """'HOST is out: CHECK: DETAIL' for each host that failed, from the round's report."""
    try:
        hosts = read_report(report).get("hosts", [])
    except UserError:
        return []
    lines = []
    for host in hosts:
        failed = [c for c in host.get("checks", []) if c.get("status") == "fail"]
        if not host.get("ok") and failed:
            lines.append(f"{host['host']} is out: {failed[0]['id']}: {failed[0]['detail']}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
