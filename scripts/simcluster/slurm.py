"""A real Slurm on the simulated cluster (`up --slurm`): Debian's slurmctld, slurmd and munged.

munged and slurmctld run on h1 (the controller, and the login node for client commands), one
slurmd on every host in its network namespace and hostname, under the node name hN. Everything
Slurm reads and writes is under <state dir>/slurm:

    etc/slurm.conf, etc/cgroup.conf    the configuration; every host sees etc/ as /etc/slurm
                                       (/etc/netns/<ns>/slurm links to it), so sinfo, srun and
                                       sbatch find it by default: in `exec`, ssh sessions, jobs
    munge/                             this cluster's own key, munged's socket, pid, log, seed
    ctld/                              slurmctld's state, pid and log
    nodes/hN/                          slurmd's spool, pid and log; tmp/ is the node's TmpFS

The fault mpi-firewall (here, not in faults.py, as it is defined by Slurm's ports) shuts a
host's ports above 1024 except Slurm's, so Slurm keeps scheduling the host and MPI fails there.

The traps that shaped it (see shared/notes/slurm-in-namespaces.md):
- `ip netns exec` mounts a fresh /sys, where slurmd's cgroup/v2 plugin fails ("No filesystem
  mounted on /sys/fs/cgroup", or "Hybrid mode is not supported" on a v1/v2 hybrid machine):
  cgroup.conf names cgroup/v1, and proctrack and task plugins are ones that need no cgroup.
- Client commands must run in a namespace of the cluster (`exec h1 srun ...`): from the root
  namespace their traffic leaves by the default route and fails with misleading errors.
- All hosts share one filesystem, so every per-node path has %n in it (PMIx's folder in TmpFS
  has no node name: two nodes would collide on "File exists").
- Slurm matches SchedulerParameters by substring: `defer_no` would turn deferral on.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from preflight.errors import Exit, UserError

from .faults import delete_tagged_rules
from .settings import UP_HINT, Settings, host_address
from .sshd import uts_pid
from .state import Host, State
from .system import locked, ok, pid_is_ours, read_pid, retry, run, stop_pids, tool

# --- installing -------------------------------------------------------------------------------

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sinfo", "/usr/bin/srun",
            "/usr/bin/sbatch", "/usr/sbin/munged")
APT_LOCK = Path("/run/lock/hvsim-slurm-apt.lock")
APT_LOG = Path("/tmp/hvsim-slurm-apt.log")
# Debian's postinsts start the default daemons through invoke-rc.d unless this says no (101);
# they would take Slurm's ports in the root namespace and read /etc/slurm, which we never use.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
POLICY_RC_D_TEXT = "#!/bin/sh\n# simcluster: no daemon starts while Slurm installs\nexit 101\n"


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if not os.access(p, os.X_OK)]


def ensure_installed(log: Callable[[str], None]) -> None:
    """Installs Debian's Slurm and munge when a program is missing (about 6 s), with no
    recommended packages (slurm-wlm would pull 38) and no daemon started by the install."""
    if not missing_programs():
        return
    if not shutil.which("apt-get"):
        raise UserError("Slurm is not installed and there is no apt-get here",
                        f"install {' '.join(PACKAGES)} with your package manager", Exit.FAILED)
    with locked(APT_LOCK, 600, "another simcluster is installing Slurm"):
        if not missing_programs():  # installed meanwhile by the holder of the lock
            return
        log(f"installing {' '.join(PACKAGES)} (apt-get; log in {APT_LOG})")
        before = _default_daemons()
        with _no_daemon_starts():
            if not _apt_install():
                _apt("update", "-q")  # a fresh machine has no package lists yet
                if not _apt_install():
                    raise UserError(f"apt-get install {' '.join(PACKAGES)} failed",
                                    f"see {APT_LOG}", Exit.FAILED)
        # A policy-rc.d of the machine's own may have let the postinsts start them.
        stop_pids(sorted(_default_daemons() - before))
    if missing_programs():
        raise UserError(f"{', '.join(missing_programs())} still missing after apt-get install",
                        f"see {APT_LOG}", Exit.FAILED)


def _default_daemons() -> set[int]:
    """munged, slurmctld and slurmd processes started with the packages' defaults: ours always
    name their socket (--socket=) or configuration (-f)."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if (entry.name.isdigit() and Path(argv[0]).name in ("munged", "slurmctld", "slurmd")
                    and "-f" not in argv and not any(a.startswith("--socket=") for a in argv)):
                found.add(int(entry.name))
    return found


@contextlib.contextmanager
def _no_daemon_starts() -> Iterator[None]:
    """A policy-rc.d that forbids starts, unless the machine has one (Docker images do): then
    that one decides, and it is left alone."""
    ours = not POLICY_RC_D.exists()
    if ours:
        POLICY_RC_D.write_text(POLICY_RC_D_TEXT)
        POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        if ours:
            POLICY_RC_D.unlink(missing_ok=True)


def _apt(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(APT_LOG, "a") as out:
        # Lock::Timeout: wait for another apt (setup.sh, another session) instead of failing.
        return subprocess.run([tool("apt-get"), "-o", "DPkg::Lock::Timeout=300", *args],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              env=env).returncode == 0


def _apt_install() -> bool:
    return _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES)


# --- names and places ------------------------------------------------------------------------

CONTROLLER = "h1"  # runs slurmctld and munged, and is the login node for client commands
PARTITION = "sim"
CTLD_PORT, SLURMD_PORT = 6817, 6818
# srun listens on these for its tasks' I/O and messages. Fixed, so the mpi-firewall fault can
# let them through; above Linux's ephemeral range (32768-60999), where MPI's listeners land.
SRUN_PORTS = (61000, 61999)
READY_S = 30.0


def slurm_dir(settings: Settings) -> Path:
    return settings.state_dir / "slurm"


def etc_dir(settings: Settings) -> Path:
    """slurm.conf and cgroup.conf; every host sees this directory as /etc/slurm."""
    return slurm_dir(settings) / "etc"


def conf_path(settings: Settings) -> Path:
    return etc_dir(settings) / "slurm.conf"


def munge_dir(settings: Settings) -> Path:
    return slurm_dir(settings) / "munge"


def socket_path(settings: Settings) -> Path:
    return munge_dir(settings) / "munge.socket"


def ctld_dir(settings: Settings) -> Path:
    return slurm_dir(settings) / "ctld"


def node_dir(settings: Settings, host: str) -> Path:
    return slurm_dir(settings) / "nodes" / host


# --- configuration ---------------------------------------------------------------------------

SLURM_CONF = """\
# Generated by simcluster for cluster {prefix}; removed by 'simcluster down'.
ClusterName={prefix}
SlurmctldHost={controller}({controller_address})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SrunPortRange={srun_lo}-{srun_hi}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# This cluster's own munged: one socket, reached through the filesystem from every namespace.
AuthInfo=socket={socket}
StateSaveLocation={ctld}/state
SlurmctldPidFile={ctld}/slurmctld.pid
SlurmctldLogFile={ctld}/slurmctld.log
# All hosts share one filesystem: every per-node path has the node's name (%n) in it.
SlurmdSpoolDir={nodes}/%n/spool
SlurmdPidFile={nodes}/%n/slurmd.pid
SlurmdLogFile={nodes}/%n/slurmd.log
TmpFS={nodes}/%n/tmp
# No cgroup can be used in a network namespace's fresh /sys: track processes by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Batch jobs start at once instead of after ~3 s (never add 'defer': matched by substring).
SchedulerParameters=batch_sched_delay=0
# A node whose slurmd comes back is usable again without an admin's 'scontrol update'.
ReturnToService=2
# The CPUs below are what the simulation says, not what this machine has.
SlurmdParameters=config_overrides
PropagateResourceLimits=NONE
KillWait=5
MailProg=/bin/true
SlurmctldDebug=info
SlurmdDebug=info
{nodes_lines}
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

CGROUP_CONF = """\
# slurmd loads a cgroup plugin even with proctrack/linuxproc; v2's autodetection fails under
# 'ip netns exec' ("No filesystem mounted on /sys/fs/cgroup"), v1 loads without a mount.
CgroupPlugin=cgroup/v1
"""


def write_config(settings: Settings, names: list[str], cpus: int) -> None:
    nodes = slurm_dir(settings) / "nodes"
    # NodeAddr by address, so a host's own /etc/hosts (Debian's 127.0.1.1 line) cannot send
    # Slurm's traffic to the wrong place.
    lines = "\n".join(f"NodeName={h} NodeAddr={host_address(i)} CPUs={cpus} State=UNKNOWN"
                      for i, h in enumerate(names, start=1))
    text = SLURM_CONF.format(
        prefix=settings.prefix, controller=CONTROLLER, controller_address=host_address(1),
        ctld_port=CTLD_PORT, slurmd_port=SLURMD_PORT, srun_lo=SRUN_PORTS[0],
        srun_hi=SRUN_PORTS[1], socket=socket_path(settings), ctld=ctld_dir(settings),
        nodes=nodes, nodes_lines=lines, partition=PARTITION)
    etc_dir(settings).mkdir(parents=True, exist_ok=True)
    conf_path(settings).write_text(text)
    (etc_dir(settings) / "cgroup.conf").write_text(CGROUP_CONF)
    for path in etc_dir(settings).iterdir():
        path.chmod(0o644)  # srun and sbatch of any user read it


def link_etc(settings: Settings, host: str) -> None:
    """`ip netns exec` bind-mounts each entry of /etc/netns/<ns>/ over /etc/<entry>: this
    link makes /etc/slurm on the host (in ssh sessions, `exec`, jobs) the cluster's config
    directory, where Slurm's commands look by default. It goes with /etc/netns/<ns> on down.
    Made before the host's sshd starts, so ssh sessions see it too."""
    link = settings.etc_dir(host) / "slurm"
    link.parent.mkdir(parents=True, exist_ok=True)
    etc_dir(settings).mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(etc_dir(settings))


def make_dirs(settings: Settings, names: list[str]) -> None:
    # munged wants its socket's folder reachable by all (it warns otherwise).
    for path in (slurm_dir(settings), munge_dir(settings), ctld_dir(settings) / "state"):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
    for host in names:
        for sub in ("spool", "tmp"):
            (node_dir(settings, host) / sub).mkdir(parents=True, exist_ok=True)
        (node_dir(settings, host) / "tmp").chmod(0o1777)  # a /tmp: any job's user writes here


def make_munge_key(settings: Settings) -> None:
    """This cluster's own key (munged takes any 32+ bytes), never the machine's."""
    key = munge_dir(settings) / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)


# --- daemons ---------------------------------------------------------------------------------

def _daemons(settings: Settings, names: list[str]) -> list[tuple[str, Path, str]]:
    """(what, pidfile, needle) of every daemon of the cluster's Slurm, in stopping order. The
    needle is a piece of its command line, so a reused pid is never taken for it."""
    conf = conf_path(settings)
    found = [(f"slurmd of {h}", node_dir(settings, h) / "slurmd.pid", f"slurmd -N {h} -f {conf}")
             for h in names]
    return found + [
        (f"slurmctld on {CONTROLLER}", ctld_dir(settings) / "slurmctld.pid",
         f"slurmctld -f {conf}"),
        (f"munged on {CONTROLLER}", munge_dir(settings) / "munged.pid",
         f"--socket={socket_path(settings)}")]


def print_tail(log: Path, lines: int = 8) -> None:
    """A daemon's last errors (or else its last lines) on stderr: a failed `up` removes the
    state directory, and the log with it, right after the error."""
    with contextlib.suppress(OSError):
        text = log.read_text(errors="replace").splitlines()
        errors = [line for line in text if re.search(r"\b(error|fatal)\b", line, re.I)]
        print(f"--- {log}:", *(errors or text)[-lines:], sep="\n", file=sys.stderr, flush=True)


def _pid(pidfile: Path, needle: str) -> int | None:
    pid = read_pid(pidfile)
    return pid if pid_is_ours(pid, needle) else None


def _start(settings: Settings, host: str, argv: list[str], pidfile: Path, needle: str,
           log: Path) -> None:
    """Starts a daemon on `host` (its network namespace and hostname) and waits for its
    pidfile. The daemon forks away and writes its pidfile; no pipes, or a caller reading ours
    would never see EOF."""
    holder = uts_pid(settings, host)
    if holder is None:
        raise UserError(f"host {host} has no hostname holder", UP_HINT, Exit.FAILED)
    pidfile.unlink(missing_ok=True)
    subprocess.run([tool("ip"), "netns", "exec", settings.host_ns(host), tool("nsenter"), "-t",
                    str(holder), "-u", "--", *argv], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    if not retry(100, 0.1, lambda: _pid(pidfile, needle)):
        print_tail(log)
        raise UserError(f"{Path(argv[0]).name} on {host} did not start", f"see {log}",
                        Exit.FAILED)


def start_munged(settings: Settings) -> None:
    mdir = munge_dir(settings)
    # --force: munged as root, in a folder others may not reach (pytest's tmp) is refused
    # otherwise; only root's commands (`exec` needs root) use this socket.
    _start(settings, CONTROLLER,
           [tool("munged"), "--force", f"--socket={socket_path(settings)}",
            f"--key-file={mdir / 'munge.key'}", f"--pid-file={mdir / 'munged.pid'}",
            f"--log-file={mdir / 'munged.log'}", f"--seed-file={mdir / 'munged.seed'}"],
           mdir / "munged.pid", f"--socket={socket_path(settings)}", mdir / "munged.log")


def start_slurmctld(settings: Settings) -> None:
    conf = conf_path(settings)
    _start(settings, CONTROLLER, [tool("slurmctld"), "-f", str(conf)],
           ctld_dir(settings) / "slurmctld.pid", f"slurmctld -f {conf}",
           ctld_dir(settings) / "slurmctld.log")


def start_slurmd(settings: Settings, host: str) -> None:
    conf, ndir = conf_path(settings), node_dir(settings, host)
    _start(settings, host, [tool("slurmd"), "-N", host, "-f", str(conf)], ndir / "slurmd.pid",
           f"slurmd -N {host} -f {conf}", ndir / "slurmd.log")


def start(settings: Settings, names: list[str], cpus: int, say: Callable[[str], None]) -> None:
    """Writes the configuration, starts munged, slurmctld and the slurmds, and waits until every
    node is idle. The hosts' /etc/slurm links (link_etc) are made before, with the hosts."""
    started = time.monotonic()
    make_dirs(settings, names)
    make_munge_key(settings)
    write_config(settings, names, cpus)
    start_munged(settings)
    start_slurmctld(settings)
    for host in names:
        start_slurmd(settings, host)
    wait_idle(settings, names)
    say(f"slurm up in {time.monotonic() - started:.1f} s: slurmctld on {CONTROLLER}, "
        f"{len(names)} nodes idle in partition {PARTITION} ({cpus} CPUs each); "
        f"config {conf_path(settings)}")


def stop(settings: Settings) -> list[str]:
    """Stops every Slurm daemon of the cluster that is still running, found through the
    pidfiles (so also those of a half-built cluster); returns one line per daemon stopped.
    Job steps left behind (slurmstepd and its tasks) live in the hosts' namespaces, which
    `down` empties next."""
    nodes = sorted(p.name for p in (slurm_dir(settings) / "nodes").glob("h*") if p.is_dir())
    stopped = []
    for what, pidfile, needle in _daemons(settings, nodes):
        pid = _pid(pidfile, needle)
        if pid is not None:
            stop_pids([pid])
            stopped.append(f"stopped {what} (pid {pid})")
    return stopped


def healthy(settings: Settings, names: list[str]) -> bool:
    return all(_pid(pidfile, needle) for _, pidfile, needle in _daemons(settings, names))


# --- clients ---------------------------------------------------------------------------------

def client(settings: Settings, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """A Slurm command on the login node, as `exec h1 ...` runs it; output captured."""
    holder = uts_pid(settings, CONTROLLER)
    if holder is None:
        raise UserError(f"host {CONTROLLER} is not running (its hostname holder is gone)",
                        UP_HINT, Exit.FAILED)
    try:
        return subprocess.run([tool("ip"), "netns", "exec", settings.host_ns(CONTROLLER),
                               tool("nsenter"), "-t", str(holder), "-u", "--", *argv],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:.0f} s")


def node_states(settings: Settings) -> dict[str, str] | str:
    """Node -> state as sinfo says ('idle', 'down*', ...), or sinfo's complaint."""
    proc = client(settings, "sinfo", "--noheader", "--Node", "--format=%N %T", timeout=15)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        return f"sinfo failed (exit {proc.returncode}): {lines[-1]}"
    return dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())


def wait_idle(settings: Settings, names: list[str], timeout_s: float = READY_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = node_states(settings)
        if isinstance(states, dict) and all(states.get(h) == "idle" for h in names):
            return
        if time.monotonic() > deadline:
            raise _not_idle(settings, names, states, timeout_s)
        time.sleep(0.2)


def _not_idle(settings: Settings, names: list[str], states: dict[str, str] | str,
              timeout_s: float) -> UserError:
    if isinstance(states, str):
        print_tail(ctld_dir(settings) / "slurmctld.log")
        return UserError(f"slurm did not come up in {timeout_s:.0f} s: {states}",
                         f"see {ctld_dir(settings) / 'slurmctld.log'}", Exit.FAILED)
    bad = [h for h in names if states.get(h) != "idle"]
    shown = ", ".join(f"{h} {states.get(h, 'missing')}" for h in bad)
    logs = " ".join(str(node_dir(settings, h) / "slurmd.log") for h in bad)
    for host in bad:
        print_tail(node_dir(settings, host) / "slurmd.log")
    return UserError(f"slurm nodes not idle after {timeout_s:.0f} s: {shown}",
                     f"see {logs} and {ctld_dir(settings) / 'slurmctld.log'}", Exit.FAILED)


def status_lines(settings: Settings, names: list[str]) -> list[str]:
    """'slurm: ...' lines: where the config is, which daemons run, what sinfo says."""
    pids = {what: _pid(pidfile, needle) for what, pidfile, needle in _daemons(settings, names)}
    shown = [f"{what} " + (f"up (pid {pid})" if pid else "DOWN")
             for what, pid in pids.items() if not what.startswith("slurmd ")]
    down = [what.split()[-1] for what, pid in pids.items()
            if what.startswith("slurmd ") and pid is None]
    shown.append(f"slurmd DOWN on {' '.join(down)}" if down else f"slurmd up on {len(names)} hosts")
    states = node_states(settings)
    nodes = (states if isinstance(states, str)
             else ", ".join(f"{h} {states.get(h, 'missing')}" for h in names))
    return [f"slurm: config {conf_path(settings)} (/etc/slurm on every host); "
            f"login node {CONTROLLER}, partition {PARTITION}",
            f"slurm: {', '.join(shown)}",
            f"slurm: nodes: {nodes}"]


# --- the fault that leaves Slurm working -----------------------------------------------------

FAULT_KINDS = ("mpi-firewall",)
# As the firewall fault (new TCP connections to 1024-65535 from other hosts are dropped), but
# Slurm's ports stay open: slurmctld's, slurmd's and srun's. Slurm keeps the node idle and
# schedules it; MPI's and Horovod's listeners (in the ephemeral range) are unreachable. One
# DROP rule, not ACCEPTs before a DROP, so it never opens a port another fault closed.
SLURM_PORTS = f"{CTLD_PORT}:{SLURMD_PORT},{SRUN_PORTS[0]}:{SRUN_PORTS[1]}"
MPI_FIREWALL_TAG = "hvsim-mpi-firewall"
MPI_FIREWALL_RULE = ("INPUT", "!", "-i", "lo", "-p", "tcp", "--syn", "--dport", "1024:65535",
                     "-m", "multiport", "!", "--dports", SLURM_PORTS,
                     "-m", "comment", "--comment", MPI_FIREWALL_TAG, "-j", "DROP")


def fault_mpi_firewall(settings: Settings, state: State, host: Host, on: bool,
                       value: str) -> None:
    iptables = ("ip", "netns", "exec", host.namespace, tool("iptables"))
    if not on:
        delete_tagged_rules(host, MPI_FIREWALL_TAG)
    elif not ok(*iptables, "-C", *MPI_FIREWALL_RULE):
        run(*iptables, "-A", *MPI_FIREWALL_RULE)


FAULTS: dict[str, Callable[[Settings, State, Host, bool, str], None]] = {
    "mpi-firewall": fault_mpi_firewall}
