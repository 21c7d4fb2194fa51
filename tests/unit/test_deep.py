"""--deep: horovodrun itself over the hosts that passed; a host whose Horovod cannot start fails
alone. horovodrun is stood in for by a script that behaves like it for a broken host."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from preflight.active.deep import run_deep
from preflight.result import Status

# Prints what the deep check's ranks print, unless a broken host is among -H's hosts: then fails
# as a Horovod built against another TensorFlow does.
STAND_IN = """#!{python}
import json, sys
args = sys.argv[1:]
hosts = [h.split(":")[0] for h in args[args.index("-H") + 1].split(",")]
broken = [h for h in hosts if h in {broken!r}]
if broken:
    print("[1,0]<stderr>:Traceback (most recent call last):", file=sys.stderr)
    print("[1,0]<stderr>:tensorflow.python.framework.errors_impl.NotFoundError: "
          "mpi_lib.so: undefined symbol: _ZN10tensorflow8internal15LogMessageFatalD1Ev",
          file=sys.stderr)
    sys.exit(1)
n = len(hosts)
for rank in range(n):
    # As horovodrun prints them: tagged, and the next line's tag glued to the end.
    print("[1,%d]<stdout>:" % rank + json.dumps({{"event": "horovod", "rank": rank, "size": n,
          "hostname": hosts[rank], "sum": n * (n - 1) / 2, "expected": n * (n - 1) / 2}})
          + "[1,%d]<stdout>:" % rank)
"""


def fake_venv(tmp_path: Path, broken: set[str]) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    runner = bin_dir / "horovodrun"
    runner.write_text(STAND_IN.format(python=sys.executable, broken=sorted(broken)))
    os.chmod(runner, 0o755)
    return str(bin_dir / "python")


def test_all_hosts_pass_with_one_horovodrun(tmp_path):
    results = run_deep(["h1", "h2", "h3"], "eth0", fake_venv(tmp_path, set()), False, 60)
    assert {c[0].status for c in results.values()} == {Status.PASS}
    assert "over 3 host(s) (h1, h2, h3)" in results["h1"][0].detail


def test_a_host_whose_horovod_does_not_load_fails_alone_naming_the_symbol(tmp_path):
    hosts = [f"h{i}" for i in range(1, 7)]
    results = run_deep(hosts, "eth0", fake_venv(tmp_path, {"h4"}), False, 60)
    bad = results["h4"][0]
    assert bad.status is Status.FAIL
    assert bad.detail.startswith("h4 failed alone with the launcher; the other 5 passed alone: "
                                 "horovodrun exited with 1: ")
    assert "undefined symbol" in bad.detail
    assert "make setup FORCE=1 on h4" in bad.remedy
    for host in hosts:
        if host != "h4":
            assert results[host][0].status is Status.PASS, results[host]
            assert results[host][0].detail.endswith("checked without h4, which failed")


def test_without_horovodrun_the_check_is_skipped_with_the_fix(tmp_path):
    results = run_deep(["h1"], "eth0", str(tmp_path / "python"), False, 60)
    assert results["h1"][0].status is Status.SKIP
    assert "make setup" in results["h1"][0].detail
    assert json.dumps(results["h1"][0].as_dict())
