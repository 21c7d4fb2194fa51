"""`make bench`: the benchmarks on a simulated cluster of our own, a table each on the terminal,
a JSON file and a PNG plot each under bench/results/.

  preflight  the preflight's wall time over 1, 3, 8, 16 hosts beside horovodrun's own interface
             discovery on the same hosts
  step       samples/s of the template under horovodrun -np 1 against plain Keras, and of two
             processes on one host against one
  allreduce  Horovod's allreduce bus bandwidth from 1 KiB to 64 MiB beside raw MPI's and one
             TCP stream's
  callbacks  what the template's callbacks cost per batch, before and after they were reworked
  scaling    predicted against measured step time on links throttled to 1 Gbit/s and
             100 Mbit/s, 1-4 hosts, plain, fp16 compression and accumulation

The cluster (scripts/simcluster, namespace prefix $BENCH_PREFIX, default hvbench) is built once,
as large as the largest host count asked for, and removed at the end whatever happens: an error,
Ctrl-C or a TERM signal. Needs root, as the cluster does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import allreduce
import callback_cost
import preflight_cost
import preflight_scale
import scaling_cost
import step_cost
from common import PREFIX, RESULTS, Cluster

from simcluster.settings import MAX_HOSTS

BENCHMARKS = ("preflight", "step", "allreduce", "callbacks", "scaling", "preflight-scale")
DEFAULT_HOSTS = (1, 3, 8, 16)
QUICK_HOSTS = (1, 3)
DEFAULT_REPEAT, QUICK_REPEAT = 3, 1
EPOCHS, QUICK_EPOCHS = 20, 6
ALLREDUCE_RANKS = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmarks on a simulated cluster (scripts/simcluster, prefix "
                    f"{PREFIX}; set BENCH_PREFIX to change it): what the preflight costs, what "
                    "Horovod costs per step, how close its allreduce gets to the link. Prints a "
                    f"table per benchmark and writes NAME.json and NAME.png to {RESULTS}. "
                    "Needs root. From make: make bench BENCH_ARGS='--quick'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--only", choices=BENCHMARKS, action="append", metavar="NAME",
                        help="run only this benchmark (repeatable): " + ", ".join(BENCHMARKS)
                             + "; default: all but preflight-scale (100 hosts, about 10 min)")
    parser.add_argument("--hosts", type=host_counts, default=None,
                        help="host counts for the preflight benchmark, comma-separated "
                             f"(default {','.join(map(str, DEFAULT_HOSTS))}; with --quick "
                             f"{','.join(map(str, QUICK_HOSTS))}); at most {MAX_HOSTS}")
    parser.add_argument("--scale-hosts", type=host_counts, default=preflight_scale.HOSTS,
                        help="host counts for preflight-scale, the per-phase cost and its "
                             "model (default 16,32,64,100)")
    parser.add_argument("--repeat", type=positive, default=None,
                        help=f"runs per measurement; figures are medians (default "
                             f"{DEFAULT_REPEAT}, with --quick {QUICK_REPEAT})")
    parser.add_argument("--epochs", type=positive, default=None,
                        help=f"training epochs per step-cost run (default {EPOCHS}, with "
                             f"--quick {QUICK_EPOCHS}); the first is left out of the rate")
    parser.add_argument("--allreduce-hosts", type=int, choices=(2, 3), default=ALLREDUCE_RANKS,
                        help="hosts (one rank each) for the allreduce benchmark")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also time the preflight of git revision REV (a temporary "
                             "worktree), side by side in the same runs: what a change costs")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in about two minutes: fewer hosts, one repeat, fewer "
                             "epochs, smaller byte budgets; the figures are rough")
    args = parser.parse_args(argv)
    args.only = tuple(dict.fromkeys(args.only or BENCHMARKS[:-1]))  # scale: asked for
    args.hosts = args.hosts or (QUICK_HOSTS if args.quick else DEFAULT_HOSTS)
    args.repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    args.epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is left out of the rate")
    return args


def host_counts(text: str) -> tuple[int, ...]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma list of numbers") from None
    if not counts or counts[0] < 1 or counts[-1] > MAX_HOSTS:
        raise argparse.ArgumentTypeError(f"host counts go from 1 to {MAX_HOSTS} (simcluster)")
    return tuple(counts)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return int(text)


def cluster_size(args: argparse.Namespace) -> int:
    """One cluster for every benchmark asked for: hosts not in a run sit idle."""
    size = 1
    if "preflight" in args.only:
        size = max(size, args.hosts[-1])
    if "allreduce" in args.only:
        size = max(size, args.allreduce_hosts)
    if "scaling" in args.only:
        size = max(size, max(scaling_cost.HOSTS))
    if "preflight-scale" in args.only:
        size = max(size, args.scale_hosts[-1])
    return size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    # Piped into a file or CI log, rich would wrap the tables at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 120)
    if os.geteuid() != 0:
        console.print("bench: needs root (simcluster builds network namespaces); run: "
                      "sudo make bench")
        return 2
    # A TERM (a CI job cancelled, timeout(1)) must unwind through the cluster's teardown.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()

    def say(text: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.0f}s  {text}[/]")

    say(f"building a {cluster_size(args)}-host cluster ({PREFIX}-h1..)")
    with Cluster(cluster_size(args)) as cluster:
        if "preflight" in args.only:
            preflight_cost.run(cluster, args.hosts, args.repeat, console, say, args.baseline)
        if "step" in args.only:
            step_cost.run(cluster, args.epochs, args.repeat, console, say)
        if "allreduce" in args.only:
            allreduce.run(cluster, args.allreduce_hosts, args.repeat, args.quick, console, say)
        if "callbacks" in args.only:
            callback_cost.run(cluster, min(args.epochs, 4), console, say)
        if "scaling" in args.only:
            scaling_cost.run(cluster, args.quick, console, say)
        if "preflight-scale" in args.only:
            preflight_scale.run(cluster, args.scale_hosts, console, say)
    say(f"done; cluster {PREFIX} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
