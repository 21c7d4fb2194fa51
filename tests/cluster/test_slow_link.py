"""A slow link on the simulated cluster (simcluster's rate fault: h2 at 50 Mbit/s): the
preflight's --bandwidth measures it, and the scaling prediction built on its report names h2 as
the host to leave out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preflight import scaling

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
RATE_MBPS = 50 / 8 * 0.96  # 50 Mbit/s less the headers tbf counts: ~6 MB/s


def test_a_throttled_host_is_measured_and_named_as_the_one_to_leave_out(cluster,
                                                                        tmp_path: Path) -> None:
    report = tmp_path / "pf.json"
    # The session cluster gives h3 Debian's '127.0.1.1 h3' line, which the preflight fails.
    cluster.fault("h3", "debian-hosts", "off")
    try:
        with cluster.fault("h2", "rate", value="50mbit"):
            proc = cluster.exec("h1", str(PYTHON), "-m", "preflight", "--hosts",
                                "h1:1,h2:1,h3:1", "--bandwidth", "--report", str(report),
                                "--hostfile", str(tmp_path / "hostfile"), cwd=str(ROOT),
                                timeout=120)
    finally:
        cluster.fault("h3", "debian-hosts", "on")
    assert report.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    rates = json.loads(report.read_text())["matrices"]["bandwidth_MBps"]
    for a, b in (("h1", "h2"), ("h2", "h1"), ("h3", "h2"), ("h2", "h3")):
        assert 0.6 * RATE_MBPS < rates[a][b] < 1.3 * RATE_MBPS, rates
    assert min(rates["h1"]["h3"], rates["h3"]["h1"]) > 4 * RATE_MBPS, rates

    matrices = json.loads(report.read_text())["matrices"]
    net = scaling.ring(["h1", "h2", "h3"], matrices)
    assert "h2" in net.slowest
    work = scaling.Workload(compute_s=0.005, parameters=1_000_000, batch_per_rank=32)
    (leave,) = [tip for tip in scaling.advice(net, work, matrices) if tip.startswith("leave")]
    assert leave.startswith("leave out h2 ")
