"""Can the launcher reach each host, log in with a key, and run the probe, in bounded time.

Ids:
- `ssh.login`: ssh to the host works without a password (BatchMode), within the timeout.
  The host the preflight runs on passes without ssh. A host that fails is tried again once the
  other hosts answered; passing only then warns, with the time it took.
- `ssh.probe`: the probe ran on the host and printed its facts.
"""

from __future__ import annotations

import dataclasses

from ..proc import Ran
from ..result import CheckResult, Status, failed, passed, skipped, warned
from .context import Context

FAMILY = "ssh"
IDS = ("ssh.login", "ssh.probe")
STAGE = "host"
SSH_FAILED = 255  # ssh's own exit status when ssh itself, not the remote command, failed

# What ssh prints on stderr -> what it means and what to do about it. First match wins.
_SSH_ERRORS: tuple[tuple[str, str, str], ...] = (
    ("Permission denied", "key login refused (no key for this user on {host})",
     "add the key: ssh-copy-id {host}"),
    ("Host key verification failed", "the host key of {host} is not known or has changed",
     "check the key, then accept it once: ssh {host} true (or ssh-keyscan {host} >> "
     "~/.ssh/known_hosts); do not turn host-key checking off"),
    ("Could not resolve hostname", "the launcher cannot resolve {host}",
     "add {host} to /etc/hosts or DNS on this machine, or use its address"),
    ("Connection refused", "nothing listens on the ssh port of {host} (sshd not running?)",
     "start sshd on {host}: sudo systemctl start ssh"),
    ("No route to host", "no route to {host}",
     "check the network path to {host}: cable, link state, routes, firewall"),
    ("Network is unreachable", "network unreachable towards {host}",
     "check the network path to {host}: cable, link state, routes"),
    ("timed out", "connection to {host} timed out (host down or packets dropped)",
     "check that {host} is up and reachable: ping {host}; check firewalls for port 22"),
)


def check(host: str, ctx: Context) -> list[CheckResult]:
    probe = ctx.probes[host]
    login = check_login(host, probe.result, probe.local, ctx.timeout_s)
    return [confirmed(host, login, probe.first, probe.result, ctx.timeout_s),
            check_probe(host, probe.result, probe.error)]


def confirmed(host: str, login: CheckResult, first: Ran | None, result: Ran | None,
              timeout_s: float) -> CheckResult:
    """ssh.login once a host was tried a second time (after the other hosts answered): a pass
    then is a warning with the time it took, a failure says it was seen twice."""
    if first is None or result is None:
        return login
    how = (f"no answer within {timeout_s:g} s" if first.timed_out
           else f"exit {first.returncode}")
    if login.status is Status.PASS:
        return warned("ssh.login", f"answered only when tried again after the other hosts, in "
                                   f"{result.seconds:.1f} s (the first try: {how})",
                      f"check {host}'s load and sshd (time ssh {host} true): the job's launch "
                      f"waits for the slowest login")
    return dataclasses.replace(login, detail=f"{login.detail}; also when tried again alone, "
                                             f"after the other hosts")


def check_login(host: str, result: Ran | None, local: bool,
                timeout_s: float) -> CheckResult:
    """ssh.login from the probe's run (None: the probe was never sent)."""
    if local:
        return passed("ssh.login", "local, no ssh needed")
    if result is None:
        return skipped("ssh.login", "not attempted")
    if result.timed_out:
        return failed("ssh.login", f"no answer from {host} within {timeout_s:g} s",
                      f"check that {host} is up and reachable: ping {host}; "
                      "check firewalls for port 22")
    if result.returncode == SSH_FAILED:
        return _login_failure(host, result.stderr)
    return passed("ssh.login", f"key login in {result.seconds:.2f} s")


def _login_failure(host: str, stderr: str) -> CheckResult:
    for needle, detail, remedy in _SSH_ERRORS:
        if needle.lower() in stderr.lower():
            return failed("ssh.login", detail.format(host=host), remedy.format(host=host))
    last = _last_line(stderr) or "ssh exited 255"
    return failed("ssh.login", f"ssh failed: {last}",
                  f"run ssh -v {host} true by hand and fix what it reports")


def check_probe(host: str, result: Ran | None, error: str | None) -> CheckResult:
    """ssh.probe: the probe ran and its output parsed (error: why the output did not parse)."""
    if result is None or result.returncode == SSH_FAILED or result.timed_out:
        return skipped("ssh.probe", "no ssh session")
    if result.returncode != 0:
        why = _last_line(result.stderr) or f"exit {result.returncode}"
        if result.returncode == 127:
            return failed("ssh.probe", f"no Python on {host}: {why}",
                          f"install python3 on {host}, then run make setup there")
        return failed("ssh.probe", f"the probe failed on {host}: {why}",
                      f"run make setup on {host}, then make preflight again")
    if error:
        return failed("ssh.probe", f"unreadable probe output from {host}: {error}",
                      f"make sure the login shell on {host} prints nothing (check ~/.bashrc)")
    return passed("ssh.probe", f"facts in {result.seconds:.2f} s")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
