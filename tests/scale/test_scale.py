"""100 simulated hosts: every healthy host kept, plain and with --bandwidth, timed against
horovodrun over the same hosts: its launch of a trivial job, and its interface discovery
(`make test-scale`, not in `make test`: the cluster alone takes about a minute to build).

The preflight runs from h1 under the common soft limit of 1,024 open files (it raises the limit
itself). horovodrun gets --start-timeout 300, which it needs at this size; its discovery is
its launch of a trivial job without --network-interfaces less the same launch with it, both
measured here, in this run.
"""

from __future__ import annotations

import os
import sys
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


@pytest.fixture(scope="module")
def horovodrun(cluster) -> dict[str, float]:
    """horovodrun's launch of a trivial job over the same hosts, with and without
    --network-interfaces; its discovery is the difference."""
    hosts = cluster.hosts(HOSTS)
    plain = preflight_cost.run_horovodrun(cluster, hosts, nics=False)
    with_nics = preflight_cost.run_horovodrun(cluster, hosts, nics=True)
    print(f"\nhorovodrun --start-timeout 300: {plain:.1f} s, with --network-interfaces "
          f"{with_nics:.1f} s: discovery {plain - with_nics:.1f} s")
    return {"total": plain, "with_nics": with_nics, "discovery": plain - with_nics}


@pytest.fixture(scope="module")
def plain(cluster) -> preflight_cost.PreflightRun:
    run = preflight_cost.run_preflight(cluster, cluster.hosts(HOSTS), mpi=True)
    say_run("preflight", run)
    return run


def test_every_healthy_host_is_kept_in_less_time_than_horovodrun_takes(plain, horovodrun):
    assert plain.returncode == 0, plain.tail
    assert len(kept(plain)) == HOSTS
    assert plain.report["sampling"]["hosts"] == HOSTS
    assert plain.seconds < horovodrun["total"], (plain.seconds, horovodrun)


def test_what_replaces_discovery_takes_less_time_than_horovodruns_discovery(plain, horovodrun):
    """The probe and the mesh (names, interfaces, every sampled path) against horovodrun's
    interface discovery: the part of the preflight that does discovery's job."""
    phases = plain.report["phases"]
    ours = phases["probe"]["wall_s"] + phases["mesh"]["wall_s"]
    assert ours < horovodrun["discovery"], (ours, horovodrun)


@pytest.mark.xfail(reason="not yet: over 100 hosts on 2 shared cores the MPI step's launch "
                          "(an orted and a Python with mpi4py per host) takes 19-23 s, and "
                          "horovodrun's discovery measured 26-28 s against the preflight's "
                          "45-49 s (2026-12-05)")
def test_the_whole_preflight_takes_less_time_than_horovodruns_discovery(plain, horovodrun):
    assert plain.seconds < horovodrun["discovery"], (plain.seconds, horovodrun)


def test_every_healthy_host_is_kept_with_bandwidth(cluster):
    run = preflight_cost.run_preflight(cluster, cluster.hosts(HOSTS), mpi=True,
                                       extra=["--bandwidth"])
    say_run("preflight --bandwidth", run)
    assert run.returncode == 0, run.tail
    assert len(kept(run)) == HOSTS
    assert run.report["matrices"].get("bandwidth_MBps")
