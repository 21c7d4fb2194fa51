"""One session per host: the host probe parks its session once the facts are out, and the mesh
agent runs in it; a session nobody takes ends; a probe that fails or hangs reads as before.

These run the real probe on this machine (localhost needs no ssh) through pipeline.probe_host.
"""

from __future__ import annotations

import json
import time

from preflight import agents, pipeline
from preflight.active import mesh as mesh_runner
from preflight.checks.mesh import MeshHost
from preflight.remote import Ssh

HOST = "localhost"
SAY_HELLO = "def main(argv):\n    print('hello', *argv, flush=True)\n    return 0\n"


def probe(ssh: Ssh, source: str | None = None, timeout_s: float = 20.0):
    argv = pipeline.probe_argv([HOST], pipeline.Options())
    return pipeline.probe_host(ssh, HOST, argv, source or agents.source("host_probe"), timeout_s)


def test_the_probe_hands_over_its_facts_and_parks_its_session():
    with Ssh() as ssh:
        found = probe(ssh)
        assert found.result.ok and found.error is None
        assert found.facts is not None and HOST in found.facts.resolved
        session = ssh.take(HOST)
        assert session is not None and session.running
        assert ssh.take(HOST) is None  # taken once
        session.send(json.dumps({"run": "hello", "source": SAY_HELLO, "argv": ["there"]}))
        assert session.read_line(time.monotonic() + 10) == "hello there\n"
        assert session.finish().returncode == 0


def test_a_parked_session_nobody_takes_ends_with_the_runner():
    with Ssh() as ssh:
        probe(ssh)
        session = ssh.take(HOST)
        ssh.park(HOST, session)
    assert session.proc.returncode == 0  # end of input: the probe left by itself


def test_a_probe_that_fails_before_its_facts_reads_as_a_failed_run():
    with Ssh() as ssh:
        found = probe(ssh, source="import sys\nsys.exit('no luck here')\n")
        assert (found.result.returncode, found.facts) == (1, None)
        assert "no luck here" in found.result.stderr
        assert ssh.take(HOST) is None


def test_a_probe_that_hangs_is_stopped_at_its_timeout():
    with Ssh() as ssh:
        started = time.monotonic()
        found = probe(ssh, source="import time\nprint('{', flush=True)\ntime.sleep(60)\n",
                      timeout_s=1.0)
        assert found.result.timed_out and found.facts is None
        assert found.result.stdout == "{\n"  # what it printed before it hung is kept
        assert time.monotonic() - started < 10
        assert ssh.take(HOST) is None


def test_the_mesh_agent_runs_in_the_parked_session(monkeypatch):
    started: list[str] = []
    with Ssh() as ssh:
        probe(ssh)
        session_of_probe = ssh._parked[HOST]
        monkeypatch.setattr(ssh, "session", lambda host, argv: started.append(host))
        agent = mesh_runner.launch(ssh, MeshHost(HOST, "127.0.0.1", "lo", 65536), "python3", 10)
        assert agent.session is session_of_probe and started == []  # no second session
        ready = agent.wait_event("ready", time.monotonic() + 10)
        assert ready is not None and ready["label"] == HOST
        agent.stop()
        assert session_of_probe.proc.returncode == 0
