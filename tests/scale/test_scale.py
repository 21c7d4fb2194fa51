"""100 simulated hosts: every healthy host kept, plain and with --bandwidth, in less time than
horovodrun's own interface discovery over the same hosts (`make test-scale`, not in `make test`:
the cluster alone takes about a minute to build).

The preflight runs from h1 under the common soft limit of 1,024 open files (it raises the limit
itself). horovodrun gets --start-timeout 300, which it needs at this size; its discovery is
its launch of a trivial job without --network-interfaces less the same launch with it, both
measured here, in this run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))
import common  # noqa: E402
import preflight_cost  # noqa: E402

HOSTS = int(os.environ.get("SCALE_HOSTS", "100"))
PREFIX = "hvscale"


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("make test-scale needs root: the simulated cluster builds namespaces")
    with common.Cluster(HOSTS, prefix=PREFIX) as built:
        yield built


def kept(run: preflight_cost.PreflightRun) -> list[str]:
    return [h["host"] for h in run.report.get("hosts", []) if h.get("ok")]


def say_run(label: str, run: preflight_cost.PreflightRun) -> None:
    print(f"\n{label}: {run.seconds:.1f} s, exit {run.returncode}, "
          f"{len(kept(run))} of {HOSTS} kept; phases {run.report.get('phases')}")


def test_every_healthy_host_is_kept_faster_than_horovodruns_discovery(cluster):
    hosts = cluster.hosts(HOSTS)
    plain = preflight_cost.run_preflight(cluster, hosts, mpi=True)
    say_run("preflight", plain)
    started = time.perf_counter()
    horovodrun = preflight_cost.run_horovodrun(cluster, hosts, nics=False)
    with_nics = preflight_cost.run_horovodrun(cluster, hosts, nics=True)
    discovery = horovodrun - with_nics
    print(f"horovodrun --start-timeout 300: {horovodrun:.1f} s, with --network-interfaces "
          f"{with_nics:.1f} s: discovery {discovery:.1f} s "
          f"(measured in {time.perf_counter() - started:.0f} s)")
    assert plain.returncode == 0, plain.tail
    assert len(kept(plain)) == HOSTS
    assert plain.report["sampling"]["hosts"] == HOSTS
    assert plain.seconds < discovery, (plain.seconds, discovery)


def test_every_healthy_host_is_kept_with_bandwidth(cluster):
    run = preflight_cost.run_preflight(cluster, cluster.hosts(HOSTS), mpi=True,
                                       extra=["--bandwidth"])
    say_run("preflight --bandwidth", run)
    assert run.returncode == 0, run.tail
    assert len(kept(run)) == HOSTS
    assert run.report["matrices"].get("bandwidth_MBps")
