"""The outputs: a table a person reads at a glance, preflight.json, and the hostfile.

Both files are written atomically (a temp file in the same folder, then os.replace), so a reader
never sees half a file. The hostfile holds only `host slots=N` lines of the healthy hosts: no
comments, no blank lines (horovodrun --hostfile rejects them). `read_report` and `vouches` are
the one reader of preflight.json: make train and the discovery use them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__, checks
from .errors import UserError
from .facts import speed_text
from .inventory import Inventory
from .inventory import hostfile_text as inventory_text
from .result import HostReport, Report, Status

if TYPE_CHECKING:
    from .pipeline import Outcome

FAMILIES = checks.family_names()  # the table's columns, in the registry's order
MARKS = {Status.PASS: ("✓", "green"), Status.WARN: ("!", "yellow"), Status.FAIL: ("✗", "red"),
         Status.SKIP: ("–", "dim"), None: ("–", "dim")}
ASCII_MARKS = {"✓": "ok", "!": "!", "✗": "X", "–": "-"}
PLAIN_WIDTH = 140


def hostfile_text(report: Report) -> str:
    return inventory_text([(h.host, h.slots) for h in report.healthy])


def read_report(path: Path) -> dict:
    """preflight.json as written by write_outputs; a UserError when it is missing or broken."""
    if not Path(path).is_file():
        raise UserError(f"{path} does not exist", "run make preflight first")
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})", "run make preflight again") from exc


def vouches(report: dict, hostfile: Path) -> bool:
    """True if the report wrote this hostfile, byte for byte (its hash is in the provenance)."""
    want = report.get("provenance", {}).get("hostfile_sha256")
    return bool(want) and Path(hostfile).is_file() and \
        hashlib.sha256(Path(hostfile).read_bytes()).hexdigest() == want


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def document(outcome: Outcome) -> dict:
    """The preflight.json content."""
    doc = outcome.report.as_dict()
    doc["matrices"] = outcome.matrices
    doc["passed_over"] = outcome.choice.passed_over_for()
    if outcome.choice.carried:  # the networks raced: what each carried, which won
        doc["networks"] = [{**c.as_dict(), "chosen": c.cidr == outcome.choice.cidr}
                           for c in outcome.choice.carried]
    if outcome.sampling:
        doc["sampling"] = outcome.sampling
    if outcome.phases:
        doc["phases"] = outcome.phases
    if outcome.candidates:
        doc["candidates"] = list(outcome.candidates)
    return doc


def write_outputs(outcome: Outcome, hostfile: Path, report_path: Path,
                  inventory_source: str, origin: Mapping | None = None) -> tuple[Outcome, str]:
    """Writes the hostfile (healthy hosts only) and the report; returns the final outcome and a
    line about the hostfile. `origin` (Inventory.origin.as_dict()) becomes
    provenance.inventory_source, e.g. {"kind": "slurm", "job_id": "7", "nodelist": "h[1-3]"}."""
    report = outcome.report
    text = hostfile_text(report)
    if text:
        data = text.encode()
        write_atomic(hostfile, data)
        digest, written, note = hashlib.sha256(data).hexdigest(), str(hostfile), str(hostfile)
    else:
        digest, written = None, None
        note = "no healthy host: no hostfile written"
        if Path(hostfile).is_file():  # a stale one must not be taken for this run's verdict
            os.unlink(hostfile)
            note += f" (removed the old {hostfile})"
    provenance = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inventory": inventory_source,
        "checks": list(outcome.checks_run),
        "hostfile": written,
        "hostfile_sha256": digest,
        "preflight_version": __version__,
    }
    if origin is not None:
        provenance["inventory_source"] = dict(origin)
    report = dataclasses.replace(report, provenance=provenance)
    outcome = dataclasses.replace(outcome, report=report)
    data = (json.dumps(document(outcome), indent=2) + "\n").encode()
    write_atomic(report_path, data)
    return outcome, note


def table(report: Report, unicode: bool = True) -> Table:
    grid = Table(title="preflight", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for name in ("host", "address", "slots"):
        grid.add_column(name, justify="right" if name == "slots" else "left", no_wrap=True)
    for family in FAMILIES:
        grid.add_column(family, justify="center")
    for host in report.hosts:
        grid.add_row(host.host, host.address or "–", str(host.slots),
                     *(mark(host, f, unicode) for f in FAMILIES))
    return grid


def mark(host: HostReport, family: str, unicode: bool = True) -> Text:
    symbol, style = MARKS[host.family_status(family)]
    return Text(symbol if unicode else ASCII_MARKS[symbol], style=style)


def problems(report: Report) -> list[Text]:
    """One line per failure and warning, with its remedy, failures first."""
    lines = []
    for status, style in ((Status.FAIL, "red"), (Status.WARN, "yellow")):
        for host in report.hosts:
            for c in host.checks:
                if c.status is status:
                    line = Text(f"{status.value.upper()} ", style=f"bold {style}")
                    line.append(f"{host.host} {c.id}: {c.detail}\n")
                    line.append("     fix: ", style="bold")
                    line.append(c.remedy)
                    lines.append(line)
    return lines


def summary(outcome: Outcome, hostfile_note: str) -> str:
    report = outcome.report
    healthy, total = len(report.healthy), len(report.hosts)
    iface = (f"{report.interface} ({report.interface_cidr})" if report.interface
             else "no interface")
    verdict = "all hosts healthy" if report.ok else f"{healthy} of {total} hosts healthy"
    return f"{verdict}; interface {iface}; np {report.np}; hostfile: {hostfile_note}"


def inventory_line(inventory: Inventory) -> str:
    """Which hosts are checked and where they came from, in one line."""
    count = len(inventory.hosts)
    if inventory.origin.kind == "slurm":  # the source names the job and counts its nodes
        return f"inventory: {inventory.source}"
    if inventory.origin.kind == "this machine":
        return "inventory: this machine (localhost; no hosts given, no Slurm allocation)"
    return f"inventory: {inventory.source} ({count} host{'' if count == 1 else 's'})"


def interfaces_table(outcome: Outcome, unicode: bool = True) -> Table:
    """Every host's interfaces, one row each, the job's interface marked."""
    grid = Table(title="interfaces (* the job's)", title_justify="left", box=box.SIMPLE_HEAD,
                 padding=(0, 1))
    for name in ("host", "", "interface", "addresses", "mac", "mtu", "speed", "state", "kind"):
        grid.add_column(name, no_wrap=name != "addresses")
    for host, found in outcome.interfaces.items():
        chosen = outcome.choice.names.get(host)
        for i in found:
            grid.add_row(host, "*" if i.name == chosen else "", i.name, i.addresses() or "–",
                         i.mac or "–", str(i.mtu), speed_text(i.speed), "up" if i.isup else "down",
                         i.kind, style="bold" if i.name == chosen else None)
            host = ""  # the name once per host
    return grid


def render(outcome: Outcome, hostfile_note: str, console: Console, quiet: bool = False,
           show_interfaces: bool = False, picture: Path | None = None) -> None:
    """The table, the problems with their remedies, where the --bandwidth picture went, and
    the summary line (alone with quiet)."""
    unicode = (console.encoding or "").lower().startswith("utf")
    if show_interfaces:
        console.print(interfaces_table(outcome, unicode))
    if not quiet:
        console.print(table(outcome.report, unicode))
        for line in problems(outcome.report):
            console.print(line)
        over = outcome.choice.passed_over_for()
        if over:
            console.print(Text("passed over: " + "; ".join(over), style="dim"))
        for c in outcome.candidates:
            console.print(f"neighbour (not in the inventory, not checked): {c['address']} "
                          f"seen from {', '.join(c['seen_from'])}")
        if picture is not None:
            console.print(f"network picture: {picture}", soft_wrap=True)
    style = "bold green" if outcome.report.ok else "bold red"
    console.print(Text(summary(outcome, hostfile_note), style=style))


class Progress:
    """What the preflight is doing, on stderr: a spinner on a terminal, plain lines elsewhere."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self._status = None

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if self._status is not None:
            self._status.update(f"preflight: {message}")
            self.console.log(message)  # leaves a trail of what was done above the spinner
        else:
            print(f"preflight: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def running(self) -> Iterator[Progress]:
        if self.quiet or not self.console.is_terminal:
            yield self
            return
        with self.console.status("preflight: starting") as status:
            self._status = status
            try:
                yield self
            finally:
                self._status = None
