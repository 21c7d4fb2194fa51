"""Faults a host can be given and taken again: each one is idempotent, and 'off' also undoes
what `up` did in its place (the MTU goes back to 1500, Debian's hosts line goes).

The network faults (link, loss, delay, rate, firewall, mtu) change the host's namespace, rate
also its port on the switch; the data network's (data-rate, data-dead) change the host's eth2
and its port on the data switch br1 (they refuse a host without eth2); the name faults
(debian-hosts, reverse-name, no-resolve) edit its /etc/hosts in place; hostname renames its
UTS namespace; sshd, orted, shadow, tmpdir and slow-login change how its sshd runs (stopped; in
a private mount namespace where orted is /bin/false or a daemon that never reports back; with a
PYTHONPATH or a TMPDIR for every session; with a forced command that waits before it runs the
one asked for). 'off' of a fault with a
value undoes whatever value is on, whatever value it is given.
"""

from __future__ import annotations

import filecmp
import os
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from preflight.errors import Exit, UserError

from .net import set_debian_line, set_host_lines
from .options import check_mtu
from .settings import CLI, DATA_BRIDGE, DATA_IFNAME, UP_HINT, Settings, data_port
from .sshd import (
    ProgramMount,
    program_mount,
    restart_sshd,
    seen_by,
    set_forced_command,
    set_hostname,
    set_program_mount,
    set_session_env,
    sshd_pid,
    start_sshd,
    stop_sshd,
)
from .state import Host, State
from .system import ok, run, tool, with_sbin

FAULT_KINDS = ("link", "loss", "delay", "rate", "sshd", "firewall", "mtu", "debian-hosts",
               "orted", "shadow", "tmpdir", "slow-login", "hostname", "reverse-name",
               "no-resolve", "data-rate", "data-dead")
DEFAULT_VALUES = {"loss": "30", "delay": "100", "rate": "100mbit", "data-rate": "100mbit",
                  "mtu": "1400",
                  "orted": "missing", "shadow": "horovod", "tmpdir": "/proc/nonexistent/tmp",
                  "slow-login": "12", "no-resolve": "h1"}
# The kinds whose value names another host; the default is the next host (h3 -> h1).
NEXT_HOST_DEFAULT = ("hostname", "reverse-name")
# What the shadow fault can shadow, and the old version each stand-in claims to be.
SHADOW_VERSIONS = {"horovod": "0.19.0", "tensorflow": "1.15.0", "mpi4py": "3.0.3"}
SHADOW_MODULE = """\
# A stand-in planted by simcluster's shadow fault: sshd's 'SetEnv PYTHONPATH=' puts this
# directory before site-packages in every ssh session, as an old copy on a shared path would.
# There is no dist-info, so importlib.metadata still reports the real package's version.
__version__ = "{version}"
"""
# How the orted fault breaks Open MPI's daemon: gone (/bin/false) or never reporting back.
ORTED_MODES = ("missing", "hang")
# The 'hang' stand-in, mounted over orted. A probe that asks orted for its name (--help) gets
# Open MPI's own answer from a copy of the real one (the mount covers the original), so it
# passes (bash's exec -a: under its own name, as it says it in its usage line); started any
# other way, as mpirun starts it, it never reports back. It waits until killed or until the
# process that started it (its ssh session, or a shell there) is gone, so a session that ends
# leaves no daemon behind.
ORTED_HANG = """\
#!{bash}
# Written by simcluster's orted fault (hang) for {host}; removed when the fault goes off.
for arg in "$@"; do
    case "$arg" in
        -h|--help|--version) exec -a "${{0##*/}}" {real} "$@" ;;
    esac
done
while kill -0 "$PPID" 2>/dev/null; do
    sleep 1
done
"""
# Run by sshd's ForceCommand for every session (the slow-login fault) as: slow-login SECONDS
# SFTP_SERVER. It waits, then does what sshd would have done: the command asked for with the
# user's shell, a login shell when none was asked for, and an sftp server for scp and sftp
# (forced, sshd no longer serves internal-sftp itself). exec keeps stdin and stdout the
# session's own pipes, byte for byte.
SLOW_LOGIN = """\
#!/bin/sh
# Written by simcluster's slow-login fault for {host}; removed when the fault goes off.
sleep "$1"
case "$SSH_ORIGINAL_COMMAND" in
    "") exec "${{SHELL:-/bin/sh}}" -l ;;
    internal-sftp) exec "$2" ;;
esac
exec "${{SHELL:-/bin/sh}}" -c "$SSH_ORIGINAL_COMMAND"
"""
# Where distributions keep OpenSSH's sftp server, which internal-sftp is built from.
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/lib/ssh/sftp-server", "/usr/libexec/sftp-server")
# A value sshd_config's SetEnv can hold as one word: no spaces, quotes or backslashes, and no
# leading '#' (a comment).
SETENV_VALUE_RE = re.compile(r"[^\s\"'\\#][^\s\"'\\]*")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
# Loopback is spared, as host firewalls (ufw, firewalld) do; only other hosts are blocked.
FIREWALL_RULE = ("INPUT", "!", "-i", "lo", "-p", "tcp", "--syn", "--dport", "1024:65535",
                 "-m", "comment", "--comment", "hvsim-firewall", "-j", "DROP")
NO_NETEM = ("unknown", "No such file", "not supported")
# The rate fault's VALUE: bits per second as tc writes them (SI: 1kbit = 1000 bit/s). Bytes per
# second (tc's kbps, mbps) are refused: '100mbps' is 800 Mbit/s to tc, which nobody means.
RATE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(bit|kbit|mbit|gbit)?", re.I)
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
RATE_MIN, RATE_MAX = 100 * 10**3, 100 * 10**9
# tbf's bucket: tc-tbf(8) asks for burst >= rate/HZ, or the tokens that arrive in one timer tick
# overflow it and the link runs slower than asked. HZ is 100 to 1000 (250 here), so 10 ms of
# traffic at the rate suits any kernel and a timer that fires late on a loaded machine, yet it
# is a hundredth of a second's data, so a transfer of more than a few of them sees the rate.
# Floor: two of the largest frames (MTU + Ethernet header), as a packet bigger than the bucket
# is dropped (GSO super-packets are cut to MTU-sized ones first).
# Its queue (what waits for tokens): 20 ms at the rate, a switch port's buffer rather than a
# bloated one, so RTT under load grows by at most that; but at least 10 frames, as with fewer
# (1mbit: 20 ms is under 2 frames) TCP loses so often that it gets 80% of the rate, not 96%.
RATE_BURST_S = 0.010
RATE_QUEUE_S = 0.020
RATE_QUEUE_FRAMES = 10
ETH_HEADER = 14


def check_request(kind: str, state: str) -> None:
    if kind not in FAULT_KINDS:
        raise UserError(f"unknown fault kind '{kind}'", f"kinds are: {' '.join(FAULT_KINDS)}")
    if state not in ("on", "off"):
        raise UserError(f"fault state must be 'on' or 'off', not '{state}'",
                        "e.g.: fault h2 firewall on")


def next_host(host: str, names: list[str]) -> str:
    """The host after `host`, wrapping around (h3 of h1..h3 -> h1)."""
    return names[(names.index(host) + 1) % len(names)] if host in names else names[0]


def check_value(kind: str, state: str, value: str | None, host: str = "",
                names: list[str] | None = None) -> str:
    """The value to use (the kind's default when none is given), checked before any change.
    `host` and `names` (the cluster's hosts) are for the kinds whose value is a host."""
    names = names or []
    if not value and kind in NEXT_HOST_DEFAULT and names:
        value = next_host(host, names)
    value = value if value else DEFAULT_VALUES.get(kind, "")
    if state == "on":
        _check_choice(kind, value, host, names)
    if kind == "loss" and not (re.fullmatch(r"[0-9]+(\.[0-9]+)?", value)
                               and 0 < float(value) <= 100):
        raise UserError(f"loss percent '{value}' is not a number in (0, 100]", "e.g. 30")
    if kind == "delay" and not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise UserError(f"delay '{value}' is not a whole number of milliseconds >= 1",
                        "e.g. 100")
    if kind == "mtu" and state == "on":
        check_mtu(value)
    if kind == "slow-login" and state == "on" and not (
            value.isascii() and value.isdigit() and int(value) >= 1):
        raise UserError(f"slow-login '{value}' is not a whole number of seconds >= 1", "e.g. 12")
    if kind in ("rate", "data-rate") and state == "on":
        rate_bits(value)
        value = value.lower()
    return value


def rate_bits(value: str) -> int:
    """'100mbit' -> 100000000: a rate for the rate fault, in bits per second."""
    match = RATE_RE.fullmatch(value)
    if not match:
        raise UserError(f"rate '{value}' is not a number of bits per second with kbit, mbit or "
                        "gbit (or none: bits)", "e.g. 100mbit or 1gbit (not mbps: tc reads that "
                        "as megabytes per second)")
    bits = float(match.group(1)) * RATE_UNITS[(match.group(2) or "bit").lower()]
    if not RATE_MIN <= bits <= RATE_MAX:
        raise UserError(f"rate '{value}' is outside 100kbit to 100gbit",
                        "e.g. 100mbit or 1gbit")
    return int(bits)


def tbf_args(rate: str, mtu: int) -> tuple[str, ...]:
    """tbf's parameters for `rate` on a link of `mtu` (see RATE_BURST_S for why these)."""
    bits, frame = rate_bits(rate), mtu + ETH_HEADER
    burst = max(int(bits / 8 * RATE_BURST_S), 2 * frame)
    queue = max(int(bits / 8 * RATE_QUEUE_S), RATE_QUEUE_FRAMES * frame)
    return ("tbf", "rate", f"{bits}bit", "burst", str(burst), "limit", str(burst + queue))


def _check_choice(kind: str, value: str, host: str, names: list[str]) -> None:
    if kind == "orted" and value not in ORTED_MODES:
        raise UserError(f"orted: unknown mode '{value}'",
                        f"modes: {' '.join(ORTED_MODES)} (default missing)")
    if kind == "tmpdir" and not SETENV_VALUE_RE.fullmatch(value):
        raise UserError(f"tmpdir '{value}' is not a path without spaces, quotes or backslashes",
                        "e.g. /proc/nonexistent/tmp")
    if kind == "shadow" and value not in SHADOW_VERSIONS:
        raise UserError(f"shadow: cannot shadow '{value}'",
                        f"modules: {' '.join(SHADOW_VERSIONS)} (default horovod)")
    if kind == "hostname":
        if not HOSTNAME_RE.fullmatch(value) or len(value) > 64:
            raise UserError(f"hostname '{value}' is not a valid host name", "e.g. h3")
        if value == host:
            raise UserError(f"hostname: '{value}' is {host}'s own name",
                            "give another name (the default is the next host's)")
    if kind in ("reverse-name", "no-resolve") and value not in names:
        raise UserError(f"{kind}: unknown host '{value}'", f"hosts are: {' '.join(names)}")
    if kind == "reverse-name" and value == host:
        raise UserError(f"reverse-name: {host}'s name already resolves to {host}'s address",
                        "give another host (the default is the next one)")


def apply(settings: Settings, state: State, host: Host, kind: str, on: bool,
          value: str) -> None:
    """Turns `kind` on (with `value`) or off on `host`; `state` is the cluster as recorded
    before this change, with the faults that are on."""
    FAULTS[kind](settings, state, host, on, value)


def _in_ns(host: Host, *argv: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", host.namespace, *argv)


def delete_tagged_rules(host: Host, tag: str) -> None:
    """Deletes every INPUT rule carrying our comment, whatever its other parameters were."""
    rules = run(*_in_ns(host, tool("iptables"), "-S", "INPUT")).stdout.splitlines()
    tagged = re.compile(rf'--comment "?{re.escape(tag)}"?( |$)')
    for rule in filter(tagged.search, rules):
        words = shlex.split(rule)
        run(*_in_ns(host, tool("iptables"), "-D", *words[1:]))


def fault_link(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    run("ip", "-n", host.namespace, "link", "set", host.ifname, "down" if on else "up")


def fault_loss(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    delete_tagged_rules(host, "hvsim-loss")
    if on:
        # Not on lo: a lossy NIC does not make a host lose packets to itself.
        run(*_in_ns(host, tool("iptables"), "-A", "INPUT", "!", "-i", "lo", "-m", "statistic",
                    "--mode", "random", "--probability", f"{float(value) / 100:.4f}",
                    "-m", "comment", "--comment", "hvsim-loss", "-j", "DROP"))


def fault_delay(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    rate = state.faults.get(f"{host.name} rate")
    _set_host_qdiscs(host, value if on else None, rate)


def fault_rate(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    """The host's link runs at `value` both ways: a tbf on the host end of its veth (what the
    host sends) and one on the switch end, port-hN (what it receives from any host). The other
    hosts' links keep their speed: traffic between them never crosses port-hN."""
    delay = state.faults.get(f"{host.name} delay")
    _set_host_qdiscs(host, delay, value if on else None)
    port = ("tc", "-n", settings.switch_ns, "qdisc")
    run(*port, "del", "dev", f"port-{host.name}", "root", check=False)
    if on:
        # The switch end's MTU stays 1500 (see net.make_host_net).
        run(*port, "add", "dev", f"port-{host.name}", "root", "handle", "10:",
            *tbf_args(value, 1500))


def _set_host_qdiscs(host: Host, delay: str | None, rate: str | None) -> None:
    """Sets the qdiscs of the host end of the link as the delay and rate faults say after this
    change. Both need the one root qdisc, so with both on, netem is the root and tbf its child
    (tc-netem's own recipe for delay plus rate): packets are delayed, then paced. Either fault
    can go on or off on its own; if netem cannot be added, the rate stays as it was."""
    qdisc = ("tc", "-n", host.namespace, "qdisc")
    run(*qdisc, "del", "dev", host.ifname, "root", check=False)
    tbf = tbf_args(rate, _mtu_of(host)) if rate else ()
    if delay:
        proc = run(*qdisc, "add", "dev", host.ifname, "root", "handle", "1:", "netem", "delay",
                   f"{delay}ms", check=False)
        if proc.returncode != 0:
            if tbf:
                run(*qdisc, "add", "dev", host.ifname, "root", "handle", "10:", *tbf)
            err = (proc.stderr or proc.stdout).strip()
            if any(word in err for word in NO_NETEM):
                raise UserError("this kernel has no netem qdisc (sch_netem)",
                                "delay cannot be simulated", Exit.UNSUPPORTED)
            raise UserError(f"tc could not add netem delay on {host.ifname}: {err}",
                            code=Exit.FAILED)
    if tbf:
        parent = ("parent", "1:1") if delay else ("root",)
        run(*qdisc, "add", "dev", host.ifname, *parent, "handle", "10:", *tbf)


def _mtu_of(host: Host, ifname: str | None = None) -> int:
    shown = run("ip", "-n", host.namespace, "link", "show", ifname or host.ifname).stdout
    match = re.search(r"\bmtu ([0-9]+)", shown)
    return int(match.group(1)) if match else 1500


def _need_data_if(state: State, host: Host, kind: str) -> None:
    """The data faults act on eth2, which only the hosts built with --data-net have."""
    if host.name not in state.options.data_net:
        raise UserError(f"{kind}: {host.name} has no data network interface {DATA_IFNAME} "
                        "(the cluster was built without --data-net there)",
                        f"build it with: {CLI} up N --data-net all (or --data-net {host.name})")


def fault_data_rate(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    """As rate, on the data network: a tbf on eth2 (what the host sends there) and one on its
    switch port data-hN (what it receives); the cluster interface keeps its speed."""
    _need_data_if(state, host, "data-rate")
    port = data_port(host.name)
    for ns, dev in ((host.namespace, DATA_IFNAME), (settings.switch_ns, port)):
        run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
    if on:
        # Both ends of the data link keep the MTU they were built with (1500).
        tbf = tbf_args(value, _mtu_of(host, DATA_IFNAME))
        run("tc", "-n", host.namespace, "qdisc", "add", "dev", DATA_IFNAME, "root",
            "handle", "10:", *tbf)
        run("tc", "-n", settings.switch_ns, "qdisc", "add", "dev", port, "root",
            "handle", "10:", *tbf)


def fault_data_dead(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    """The host's data port leaves the bridge br1: eth2 stays up with its address and carrier
    but reaches nobody, like a dead second NIC or an unplugged switch port (off: back on br1)."""
    _need_data_if(state, host, "data-dead")
    run("ip", "-n", settings.switch_ns, "link", "set", data_port(host.name),
        *(("nomaster",) if on else ("master", DATA_BRIDGE)))


def fault_sshd(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    if on:
        stop_sshd(settings, host.name)
    elif sshd_pid(settings, host.name) is None:
        start_sshd(settings, host.name)


def fault_firewall(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    if not on:
        delete_tagged_rules(host, "hvsim-firewall")
    elif not ok(*_in_ns(host, tool("iptables"), "-C", *FIREWALL_RULE)):
        run(*_in_ns(host, tool("iptables"), "-A", *FIREWALL_RULE))


def fault_mtu(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    mtu = check_mtu(value) if on else 1500
    run("ip", "-n", host.namespace, "link", "set", host.ifname, "mtu", str(mtu))
    rate = state.faults.get(f"{host.name} rate")
    if rate:  # tbf's bucket must hold the new largest packet
        _set_host_qdiscs(host, state.faults.get(f"{host.name} delay"), rate)


def fault_debian_hosts(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    path = settings.etc_dir(host.name) / "hosts"
    if not path.is_file():
        raise UserError(f"{path} is missing", UP_HINT, Exit.FAILED)
    set_debian_line(path, host.name, on)


def session_program(name: str) -> str | None:
    """Where an ssh session finds `name`: the PATH here plus the usual directories. A symlink
    is kept as it is: a bind mount over it lands on the file it points to."""
    usual = "/usr/local/bin:/usr/bin:/bin"
    return shutil.which(name, path=with_sbin(f"{os.environ.get('PATH', '')}:{usual}"))


def fault_orted(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    """Open MPI's daemon does not work on the host over ssh: its sshd runs in a private mount
    namespace where orted is replaced, which only its sessions see. 'missing': by /bin/false,
    which exits 1 and, given the arguments mpirun gives orted, prints nothing (alone, --help or
    --version make it print its own text, naming GNU false). 'hang': by ORTED_HANG, which
    answers --help as orted but never reports back to mpirun. The sshd restarts only when its
    sessions do not see the stand-in asked for already."""
    old = program_mount(settings, host.name)
    program = old.program if old else session_program("orted")
    if program is None:
        if not on:
            return
        raise UserError("orted (Open MPI) is not installed on this machine",
                        "install Open MPI (scripts/setup.sh) to simulate it", Exit.UNSUPPORTED)
    real = os.path.realpath(program)
    stand_in = _orted_stand_in(settings, host.name, real, value) if on else real
    set_program_mount(settings, host.name, ProgramMount(program, stand_in) if on else None)
    _show_sessions(settings, host.name, real, stand_in)
    if not (on and value == "hang"):
        for name in ("orted-hang", "orted-real"):
            (settings.host_dir(host.name) / name).unlink(missing_ok=True)


def _orted_stand_in(settings: Settings, host: str, real: str, mode: str) -> str:
    """The file to mount over orted for `mode`. For 'hang', the copy and the wrapper are
    written only when they differ, so turning the fault on again restarts nothing: the copy by
    a rename (a running program cannot be written over), the wrapper in place (the mount holds
    its inode, so sessions see the new text at once)."""
    if mode == "missing":
        return tool("false")
    hdir = settings.host_dir(host)
    copy, wrapper = hdir / "orted-real", hdir / "orted-hang"
    if not copy.exists() or not filecmp.cmp(real, copy, shallow=False):
        staged = hdir / "orted-real.new"
        shutil.copy2(real, staged)  # then renamed: a running copy cannot be written over
        os.replace(staged, copy)
    _write_script(wrapper, ORTED_HANG.format(bash=tool("bash"), host=host,
                                             real=shlex.quote(str(copy))))
    return str(wrapper)


def _write_script(path: Path, text: str) -> None:
    """Writes an executable script others can run (sessions may be another user's), unless it
    already says `text`."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    path.chmod(0o755)


def _show_sessions(settings: Settings, host: str, real: str, stand_in: str) -> None:
    """Makes the host's running sshd (if any) give its new sessions `stand_in` at `real`,
    restarting it when they see something else, and checks that they do."""
    want = os.stat(stand_in)

    def sessions_see_it() -> bool:
        pid = sshd_pid(settings, host)
        seen = seen_by(pid, real) if pid is not None else None
        return pid is None or (seen is not None and os.path.samestat(seen, want))

    if not sessions_see_it():
        restart_sshd(settings, host)
        if not sessions_see_it():
            raise UserError(f"could not put {stand_in} at {real} for the sshd of {host}",
                            f"see {settings.host_dir(host) / 'sshd.log'}", Exit.FAILED)


def shadow_dir(settings: Settings, host: str) -> Path:
    return settings.host_dir(host) / "shadow"


def fault_shadow(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    """A stand-in package (just `__version__`, no dist-info) in <state>/hN/shadow, put on
    PYTHONPATH by the host's sshd for every session; the sshd restarts to read it."""
    directory = shadow_dir(settings, host.name)
    shutil.rmtree(directory, ignore_errors=True)
    if on:
        package = directory / value
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(SHADOW_MODULE.format(
            version=SHADOW_VERSIONS[value]))
        for path in (directory, package):
            path.chmod(0o755)
        (package / "__init__.py").chmod(0o644)
    if set_session_env(settings, host.name, "PYTHONPATH", str(directory) if on else None):
        restart_sshd(settings, host.name)


def fault_tmpdir(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    """Every ssh session on the host has TMPDIR=VALUE from its sshd (SetEnv, shared with the
    shadow fault's PYTHONPATH): Open MPI makes its session directory under TMPDIR, so its daemon
    fails there when VALUE cannot be made. The sshd restarts when the line changes."""
    if set_session_env(settings, host.name, "TMPDIR", value if on else None):
        restart_sshd(settings, host.name)


def fault_slow_login(settings: Settings, state: State, host: Host, on: bool,
                     value: str) -> None:
    """Every new ssh session on the host waits VALUE seconds before its command runs: sshd's
    ForceCommand runs SLOW_LOGIN from the host's directory. The sshd restarts when the line
    changes."""
    script = settings.host_dir(host.name) / "slow-login"
    command = None
    if on:
        _write_script(script, SLOW_LOGIN.format(host=host.name))
        sftp = next((path for path in SFTP_SERVERS if os.access(path, os.X_OK)), tool("false"))
        command = shlex.join((str(script), value, sftp))
    if set_forced_command(settings, host.name, command):
        restart_sshd(settings, host.name)
    if not on:
        script.unlink(missing_ok=True)


def fault_hostname(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    set_hostname(settings, host.name, value if on else host.name)


def _fix_host_lines(settings: Settings, state: State, host: Host, kind: str, on: bool,
                    value: str) -> None:
    """Rewrites the host's lines for the cluster's hosts from the reverse-name and no-resolve
    faults as they are after this change, so either one can be turned off on its own."""
    faults = {k: v for k, v in state.faults.items() if k != f"{host.name} {kind}"}
    if on:
        faults[f"{host.name} {kind}"] = value
    reverse = faults.get(f"{host.name} reverse-name")
    missing = faults.get(f"{host.name} no-resolve")
    addresses = {h.name: h.address for h in state.hosts}
    if reverse in addresses:
        addresses[host.name] = addresses[reverse]
    if missing in addresses:
        addresses[missing] = None
    path = settings.etc_dir(host.name) / "hosts"
    if not path.is_file():
        raise UserError(f"{path} is missing", UP_HINT, Exit.FAILED)
    set_host_lines(path, addresses)


def fault_reverse_name(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    """The host's own name resolves, on the host, to another host's address."""
    _fix_host_lines(settings, state, host, "reverse-name", on, value)


def fault_no_resolve(settings: Settings, state: State, host: Host, on: bool, value: str) -> None:
    """The host has no line for one of the cluster's names: it cannot resolve it."""
    _fix_host_lines(settings, state, host, "no-resolve", on, value)


FAULTS: dict[str, Callable[[Settings, State, Host, bool, str], None]] = {
    "link": fault_link, "loss": fault_loss, "delay": fault_delay, "rate": fault_rate,
    "sshd": fault_sshd, "firewall": fault_firewall, "mtu": fault_mtu,
    "debian-hosts": fault_debian_hosts, "orted": fault_orted, "shadow": fault_shadow,
    "tmpdir": fault_tmpdir, "slow-login": fault_slow_login, "hostname": fault_hostname,
    "reverse-name": fault_reverse_name, "no-resolve": fault_no_resolve,
    "data-rate": fault_data_rate, "data-dead": fault_data_dead}
