"""preflight: check the hosts for distributed training, then write the hostfile and a report.

Checks each host's ssh login, names, interfaces, software, resources and clock from one probe
per host, picks the interface every host reaches every other through (where several networks
reach every host: the one that carries the most in a short burst between a few pairs;
--interface forces one), then tests TCP, the path MTU and packet loss between the healthy hosts
and runs an MPI allreduce over them. With --bandwidth it also measures MPI bandwidth per host
pair and draws latency and bandwidth as two heatmaps beside the report (preflight.json ->
preflight-network.png).

A host that times out is tried again after the others before it fails (passing then is a
warning), and a group test that fails is narrowed to the hosts behind it by runs of fewer
hosts: one bad host does not cost the healthy ones their place (README: How a host is blamed).

Beyond 16 hosts the pairwise tests measure each host against 5-8 others (the ring and 6 random
pairings, a new draw each run; the report's "sampling" says which), so their rounds do not grow
with the hosts; the probes go out as many at once as the answers stay quick, and the report's
"phases" has each phase's time (README: At scale).

Exit codes: 0 every host healthy; 1 some hosts are out (the hostfile lists the healthy ones;
with none healthy no hostfile is written and an old one is removed); 2 bad input (nothing
written); 3 the preflight itself failed (a bug: the traceback says where).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from . import inventory as inv
from . import pictures, pipeline, proc, report, slurm
from .cost import Phases
from .errors import Exit, UserError, render


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="preflight", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Hosts: --hosts or --inventory; else, inside a Slurm allocation "
               "(SLURM_JOB_NODELIST), its\nnodes, with the job's slots (SLURM_TASKS_PER_NODE; "
               "see scripts/preflight/slurm.py); else\nthis machine alone (localhost). Slots "
               "not given default to the host's GPUs, else its\nphysical cores.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--hosts", metavar="LIST",
                        help="comma-separated host[:slots], e.g. 'h1:2,h2:2'")
    source.add_argument("--inventory", metavar="PATH",
                        help="an Open MPI hostfile: 'host slots=N' lines, # comments")
    p.add_argument("--hostfile", metavar="PATH", default="hostfile", type=Path,
                   help="where to write the healthy hosts (default: ./hostfile)")
    p.add_argument("--report", metavar="PATH", default="preflight.json", type=Path,
                   help="where to write the JSON report (default: ./preflight.json)")
    p.add_argument("--bandwidth", action="store_true",
                   help="also measure the MPI bandwidth matrix (slower), and draw latency and "
                        "bandwidth per host pair beside the report (preflight.json -> "
                        "preflight-network.png; the slow pairs outlined; needs matplotlib)")
    p.add_argument("--interface", metavar="NAME|CIDR",
                   help="use this network for the job (an interface name such as eth2, or a "
                        "CIDR such as 10.0.0.0/24) instead of the one chosen; it is checked "
                        "like any other, and a note says if another network measured faster")
    p.add_argument("--no-mpi", action="store_true", help="skip the MPI allreduce test")
    p.add_argument("--deep", action="store_true",
                   help="also run one real Horovod allreduce through horovodrun on the hosts "
                        "that passed, with the training's imports (finds a Horovod built "
                        "against another TensorFlow); costs a TensorFlow import on every host, "
                        "about 7-9 s more for 1-2 hosts on 2 cores")
    p.add_argument("--elastic", action="store_true",
                   help="check for an elastic (Gloo) job: two hosts with one hostname fail "
                        "instead of warning")
    p.add_argument("--neighbours", action="store_true",
                   help="list each host's ARP/neighbour-table entries as candidate hosts "
                        "(reads the tables only; never sweeps a subnet)")
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0,
                   help="time limit of each step per host (default: 10); a host that "
                        "misses it is tried again once, after the others")
    p.add_argument("--show", choices=["interfaces"], action="append", default=[],
                   help="also print every host's interfaces (addresses and their class, MAC, "
                        "MTU, speed, physical or virtual), the job's marked with *")
    p.add_argument("--quiet", action="store_true",
                   help="no progress and no table: only the summary line")
    p.add_argument("--json", action="store_true",
                   help="print the report JSON on stdout (the table goes to stderr)")
    return p


def check_outputs(args: argparse.Namespace) -> None:
    """Raises a UserError when the options or the output paths are unusable."""
    if args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout:g}", "give a positive number of seconds")
    if args.inventory and Path(args.inventory).resolve() == args.hostfile.resolve():
        raise UserError(f"--hostfile {args.hostfile} is the inventory itself",
                        "write the healthy hosts elsewhere, e.g. --hostfile hostfile.healthy")
    for flag, path in (("--hostfile", args.hostfile), ("--report", args.report)):
        folder = path.resolve().parent
        if path.is_dir():
            raise UserError(f"{flag} {path} is a folder", "give a file path")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"{flag} {path}: cannot write in {folder}",
                            "create it or pick another path")


def main(argv: list[str] | None = None) -> int:
    """run(), with a crash kept apart from "some hosts are out": Python exits 1 on an uncaught
    exception, and callers (make train, the elastic discovery) read 1 as a verdict."""
    try:
        return run(argv)
    except UserError as exc:
        return render("preflight", exc)
    except Exception:  # every bug, reported as one
        traceback.print_exc()
        print("preflight: error: the preflight itself failed (above); please report it",
              file=sys.stderr)
        return Exit.CRASHED


def load_inventory(args: argparse.Namespace, environ: Mapping[str, str]
                   ) -> tuple[inv.Inventory, str | None]:
    """--hosts or --inventory where given, else the Slurm allocation we run in, else this
    machine; with a note when hosts given explicitly pass over an allocation."""
    job = slurm.job(environ)
    explicit = args.hosts is not None or args.inventory is not None
    if job is not None and not explicit:
        return slurm.inventory(job, environ), None
    given = inv.load(args.hosts, args.inventory)
    return slurm.passed_over(given, job) if job is not None else (given, None)


def draw_picture(outcome: pipeline.Outcome, report_path: Path, say: report.Progress
                 ) -> Path | None:
    """--bandwidth: the matrices as a picture beside the report; None (with a line through
    `say`) where it cannot be drawn, which never fails the preflight."""
    rep = outcome.report
    ranks = outcome.matrices.get("ranks") if isinstance(outcome.matrices, dict) else None
    hosts = len(set(ranks)) if isinstance(ranks, list) else len(rep.healthy)
    title = (f"preflight {rep.provenance.get('created', '')}: MPI between {hosts} host(s) on "
             f"{rep.interface or '?'} ({rep.interface_cidr or '?'})")
    return pictures.write_picture(outcome.matrices, report_path, say, title)


def run(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    phases = Phases()
    with phases.phase("inventory"):
        inventory, note = load_inventory(args, os.environ)
    inv.check_duplicates(inventory)
    check_outputs(args)
    proc.raise_open_files(len(inventory.names))  # before any ssh session is opened
    out = Console(stderr=args.json, highlight=False)
    if not out.is_terminal:  # a log or a pipe: do not squeeze the table to 80 columns
        out.width = max(out.width, report.PLAIN_WIDTH)
    progress = report.Progress(Console(stderr=True, highlight=False), quiet=args.quiet)
    progress(report.inventory_line(inventory))
    if note:
        progress(note)
    options = pipeline.Options(timeout_s=args.timeout, bandwidth=args.bandwidth,
                               mpi=not args.no_mpi, neighbours=args.neighbours,
                               elastic=args.elastic, deep=args.deep, interface=args.interface)
    with progress.running():
        outcome = pipeline.run(inventory, options, progress, phases)
    outcome, written = report.write_outputs(outcome, args.hostfile, args.report,
                                            inventory.source, inventory.origin.as_dict())
    picture = draw_picture(outcome, args.report, progress) if args.bandwidth else None
    report.render(outcome, written, out, quiet=args.quiet,
                  show_interfaces="interfaces" in args.show, picture=picture)
    if args.json:
        json.dump(report.document(outcome), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return Exit.OK if outcome.report.ok else Exit.SOME_OUT


if __name__ == "__main__":
    sys.exit(main())
