"""The command line: `python3 -m simcluster COMMAND [ARGS]` (PYTHONPATH=scripts), which the
Makefile's cluster-* targets and scripts/cluster.sh run. Every error is a UserError, rendered
once here as one line; exit codes come from preflight.errors.Exit."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from preflight.errors import Exit, UserError, render

from .cluster import FAULT_KINDS, Cluster
from .options import UpOptions
from .settings import (
    CLI,
    DATA_NET,
    DEFAULT_HOSTS,
    MAX_HOSTS,
    PROG,
    SECOND_NET,
    SUBNET,
    Settings,
)
from .system import need_root, with_sbin

COMMANDS = ("up", "down", "status", "hosts", "exec", "slurm", "fault")

HELP = """\
Usage: {cli} COMMAND [ARGS]
       (make cluster-up, cluster-down, cluster-status, cluster-exec, cluster-fault run it)

A simulated cluster of hosts h1..hN on this machine: one network namespace per host
({prefix}-h1..{prefix}-hN, each with its own sshd, hostname and /etc/hosts) joined by a bridge
br0 in the switch namespace {prefix}-sw. Host hN has address {subnet}.(10+N)/24 on eth0; the
namespaces have no default route and nothing is added to the root namespace. Needs root.

Commands:
  up [N] [OPTIONS]   build N hosts (default {default}, at most {most}) and wait until every sshd
                     accepts a key login. Idempotent: when the same cluster is already up and
                     healthy it says so; otherwise it tears down and rebuilds.
      --decoy-bridge HOSTS    add a Docker-like bridge docker0 (172.17.0.1/16, UP) on HOSTS
      --second-if HOSTS       add a second interface eth1 ({second}.N.1/24, reaching nothing)
      --debian-hosts HOSTS    put Debian's '127.0.1.1 hN' line before the real one in /etc/hosts
      --mtu HOST=MTU[,...]    set the MTU of that host's cluster interface (switch side stays 1500)
      --ifname HOST=NAME[,...] name that host's cluster interface NAME instead of eth0
      --data-net HOSTS        a second network on its own switch: HOSTS get a second NIC eth2
                              ({data}.(10+N)/24) wired to bridge br1 in {prefix}-sw (port
                              data-hN); the names in /etc/hosts stay on eth0, as on real
                              clusters the data network has no names; 'status' shows eth2's
                              address among a host's extras
      --slurm                 also run a real Slurm (Debian's slurmctld, slurmd, munge; installed
                              with apt-get when missing): munged and slurmctld on h1, one slurmd
                              per host, node names h1..hN, one partition 'sim'; waits until
                              every node is idle. Every host sees the cluster's config as
                              /etc/slurm, so sinfo, srun, sbatch work in `exec` and over ssh.
      --slurm-cpus N          CPUs of each Slurm node (default 2; implies --slurm)
                     HOSTS is 'all' or a comma list such as h1,h3.
  down               kill every process in the cluster's namespaces, delete the namespaces,
                     /etc/netns/{prefix}-*, the ssh config block and the state directory. Works
                     on a half-built cluster; prints "nothing to remove" when there is nothing.
  status             hosts, addresses, sshd state and active faults (with --slurm: Slurm's daemons
                     and each node's state as sinfo says); exit 1 if no cluster is up.
  hosts              the host names, one per line; exit 1 if no cluster is up.
  exec HOST CMD [ARGS...]
                     run CMD on HOST (its network namespace, /etc/hosts and hostname) with stdin,
                     stdout and stderr passed through; exits with CMD's status.
  slurm CMD [ARGS...]
                     run CMD on the login node h1 of a cluster built with --slurm, e.g.
                     'slurm sinfo', 'slurm srun -N3 hostname', 'slurm sbatch --wrap hostname'
                     (jobs run as root: mpirun in them needs --allow-run-as-root).
  fault HOST KIND on|off [VALUE]
                     inject (on) or clear (off) a fault; idempotent; 'status' lists active ones.
      link           the cluster interface goes down (off: up)
      loss [PCT]     drop PCT% (default 30) of packets arriving at HOST (iptables statistic)
      delay [MS]     add MS ms (default 100) of delay with the netem qdisc; exits 3 when the
                     kernel has no netem
      rate [RATE]    HOST's link runs at RATE both ways (default 100mbit; kbit, mbit, gbit or
                     bare bits per second, 100kbit to 100gbit): a tbf qdisc on the host end of
                     its veth and one on its switch port; the other hosts' links keep their
                     speed. With delay on too, tbf is netem's child (delayed, then paced)
      data-rate [RATE]
                     as rate, on the data network (--data-net): a tbf on HOST's eth2 and one on
                     its switch port data-hN; the cluster interface keeps its speed
      data-dead      HOST's data port data-hN leaves the bridge br1: eth2 stays up with its
                     address and carrier but reaches nobody, like a dead second NIC or an
                     unplugged switch port (off: back on br1)
                   Both refuse (exit 2) a HOST without eth2 (not in --data-net).
      sshd           stop HOST's sshd (off: start it again)
      firewall       drop new incoming TCP connections to ports 1024-65535 (ssh on 22 still works)
      mpi-firewall   as firewall, but Slurm's ports stay open (6817, 6818 and srun's 61000-61999):
                     Slurm keeps the node idle and runs jobs there, while MPI's and Horovod's
                     connections to it fail
      mtu [MTU]      set the cluster interface MTU (default 1400; off: back to 1500)
      debian-hosts   add Debian's '127.0.1.1 HOST' line to HOST's /etc/hosts (off: remove it,
                     also when 'up --debian-hosts' put it there); running sessions see the change
      orted [MODE]   Open MPI's daemon does not work on HOST over ssh: HOST's sshd restarts in a
                     private mount namespace where orted (as ssh sessions find it) is
                     bind-mounted with a stand-in; the machine, `exec` and the other hosts keep
                     the real orted (off: sshd restarts without the mount); exits 3 when Open
                     MPI is not installed. MODE:
                       missing  (the default) /bin/false: mpirun on another host fails with
                                "ORTE was unable to reliably start one or more daemons"
                       hang     a daemon that starts and never reports back: 'orted --help'
                                and '--version' answer with Open MPI's own text (a copy of
                                orted in <state>/HOST), any other arguments make it sleep until
                                killed or its session ends, so mpirun hangs before any rank starts
      shadow [MODULE]
                     ssh sessions on HOST import an old MODULE: horovod (the default) 0.19.0,
                     tensorflow 1.15.0 or mpi4py 3.0.3, a package holding only __version__ and no
                     dist-info (importlib.metadata still reports the real version) in
                     <state>/HOST/shadow, put on PYTHONPATH by 'SetEnv' in HOST's sshd_config;
                     sshd restarts (off: the variable and the directory go, sshd restarts)
      tmpdir [PATH]  ssh sessions on HOST get TMPDIR=PATH (no spaces, quotes or backslashes)
                     from 'SetEnv' in HOST's sshd_config, where Open MPI makes its session
                     directory, so its daemon fails there when PATH cannot be made. The default,
                     /proc/nonexistent/tmp, cannot be made even by root (Open MPI as root would
                     make /nonexistent/tmp). sshd restarts (off: the variable goes, sshd
                     restarts). With shadow on too, both share the one SetEnv line (sshd reads
                     only the first) and either goes off on its own
      slow-login [S] every new ssh session on HOST (multiplexed ones too) waits S whole seconds
                     (default 12) before its command runs: 'ForceCommand' in HOST's sshd_config
                     runs <state>/HOST/slow-login, which sleeps, then runs the command asked for
                     with the user's shell (a login shell when none; sftp-server for scp); stdin
                     and stdout pass through untouched; sshd restarts (off: the line and the
                     script go, sshd restarts)
      hostname [NAME]
                     HOST calls itself NAME (default: the next host's name, h3 -> h1) in its UTS
                     namespace, which ssh sessions and `exec` share; /etc/hosts is unchanged
                     (off: back to HOST)
      reverse-name [H]
                     HOST's own name resolves, on HOST, to host H's address (default: the next
                     host): its line in HOST's /etc/hosts is rewritten (off: set right again)
      no-resolve [H] HOST cannot resolve host H (default h1): H's line leaves HOST's /etc/hosts;
                     the other hosts still resolve it (off: put back)
                   Open sessions see the /etc/hosts and hostname faults at once; the sshd,
                   orted, shadow, tmpdir and slow-login faults reach new ssh sessions only.

Files: the state directory ({state} here; $HVSIM_DIR, default /tmp/<prefix>) holds state.json
(the options, each host's name, address, interface and namespace, the active faults; written
last by 'up'), id_ed25519 (the cluster's client key), known_hosts (each host key under the
host's name and address), ssh_config, and hN/ (sshd_config, ssh_host_ed25519_key,
authorized_keys, sshd.pid, uts.pid, sshd.log; while the orted fault is on, blocked-program
(the program and its stand-in), and orted-hang and orted-real in hang mode; shadow/ and
slow-login while those faults are on); with --slurm, slurm/ (etc/slurm.conf and cgroup.conf,
munge/, ctld/, nodes/hN/ with each slurmd's spool, pid, log and TmpFS).
/etc/netns/{prefix}-hN/hosts is the host's /etc/hosts; /etc/netns/{prefix}-hN/slurm, a link to
slurm/etc, is its /etc/slurm. 'up' puts 'Include <dir>/ssh_config' at the top of the launching
user's ~/.ssh/config ($SUDO_USER's under sudo) between the lines
  # >>> {prefix} cluster (scripts/cluster.sh) >>>
  # <<< {prefix} cluster <<<
and 'down' removes them. ~/.ssh/authorized_keys is never touched; host key checking stays on.

Environment: HVSIM_PREFIX (namespace prefix, default hvsim; lets a second cluster exist beside
the first), HVSIM_DIR (state directory, default /tmp/<prefix>).

Examples (from the checkout, as root; scripts/cluster.sh is the same command):
  {cli} up 3 --decoy-bridge all --debian-hosts h3
  {cli} exec h1 ssh h2 hostname
  {cli} fault h2 firewall on
  {cli} up 3 --slurm
  {cli} slurm srun -N3 hostname
  {cli} down

Exit status: 0 ok, 1 failure (or not root, or no cluster), 2 bad input, 3 fault not supported here.
"""


def help_text() -> str:
    try:
        settings = Settings.from_env()
    except UserError:
        settings = Settings()
    return HELP.format(cli=CLI, prefix=settings.prefix, state=settings.state_dir, subnet=SUBNET,
                       second=SECOND_NET, data=DATA_NET, default=DEFAULT_HOSTS, most=MAX_HOSTS)


UP_OPTIONS = (
    ("--decoy-bridge", "HOSTS", "add a Docker-like bridge docker0 (172.17.0.1/16, UP)"),
    ("--second-if", "HOSTS", f"add eth1 ({SECOND_NET}.N.1/24), reaching nothing"),
    ("--debian-hosts", "HOSTS", "put Debian's '127.0.1.1 hN' line first in /etc/hosts"),
    ("--mtu", "HOST=MTU[,...]", "the MTU of the host's cluster interface (switch side: 1500)"),
    ("--ifname", "HOST=NAME[,...]", "name the host's cluster interface NAME instead of eth0"),
    ("--data-net", "HOSTS", f"add eth2 ({DATA_NET}.(10+N)/24) on a second switch, br1"),
    ("--slurm-cpus", "N", "CPUs of each Slurm node (default 2; implies --slurm)"))


class Parser(argparse.ArgumentParser):
    """argparse whose complaints become one-line UserErrors (exit 2) instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        missing = re.match(r"argument (--[\w-]+): expected one argument", message)
        raise UserError(f"{missing.group(1)} needs a value" if missing else message,
                        f"see {CLI} --help")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, add_help=False, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    up = sub.add_parser("up", allow_abbrev=False,
                        epilog="HOSTS is 'all' or a comma list such as h1,h3.")
    up.add_argument("n", nargs="?", metavar="N", help=f"hosts, 1 to {MAX_HOSTS} (default 3)")
    for opt, what, text in UP_OPTIONS:
        up.add_argument(opt, default="", metavar=what, help=text)
    up.add_argument("--slurm", action="store_true", help="also run a real Slurm")
    for name in ("down", "status", "hosts"):
        sub.add_parser(name, allow_abbrev=False)
    run = sub.add_parser("exec", allow_abbrev=False)
    run.add_argument("host", nargs="?", metavar="HOST")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]")
    on_login = sub.add_parser("slurm", allow_abbrev=False)
    on_login.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]")
    fault = sub.add_parser("fault", allow_abbrev=False, epilog=f"KIND: {', '.join(FAULT_KINDS)}")
    for name, meta in (("host", "HOST"), ("kind", "KIND"), ("state", "on|off"),
                       ("value", "VALUE")):
        fault.add_argument(name, nargs="?", metavar=meta)
    return parser


# --- the commands ----------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise UserError(f"unknown option '{extra[0]}' for up", f"see {CLI} --help")
    options = UpOptions.parse(args.n, args.decoy_bridge, args.second_if, args.debian_hosts,
                              args.mtu, args.ifname, args.slurm, args.slurm_cpus,
                              args.data_net)
    need_root()
    Cluster.from_env().up(options)
    return Exit.OK


def no_arguments(command: str, extra: list[str]) -> None:
    if extra:
        raise UserError(f"{command} takes no arguments (got '{' '.join(extra)}')",
                        f"see {CLI} --help")


def cmd_down(args: argparse.Namespace, extra: list[str]) -> int:
    no_arguments("down", extra)
    need_root()
    Cluster.from_env().down()
    return Exit.OK


def cmd_status(args: argparse.Namespace, extra: list[str]) -> int:
    no_arguments("status", extra)
    print("\n".join(Cluster.from_env().status_lines()))
    return Exit.OK


def cmd_hosts(args: argparse.Namespace, extra: list[str]) -> int:
    no_arguments("hosts", extra)
    print("\n".join(Cluster.from_env().hosts))
    return Exit.OK


def cmd_exec(args: argparse.Namespace, extra: list[str]) -> int:
    if not args.host or not args.argv:
        raise UserError("exec needs a host and a command", f"e.g.: {CLI} exec h1 hostname")
    need_root()
    argv = Cluster.from_env().exec_argv(args.host, args.argv)
    sys.stdout.flush()
    os.execve(argv[0], argv, command_env())  # the command takes this process: its status is ours


def cmd_slurm(args: argparse.Namespace, extra: list[str]) -> int:
    if not args.argv:
        raise UserError("slurm needs a command", f"e.g.: {CLI} slurm srun -N3 hostname")
    need_root()
    cluster = Cluster.from_env()
    argv = cluster.exec_argv(cluster.slurm_login_node(), args.argv)
    sys.stdout.flush()
    os.execve(argv[0], argv, command_env())


def command_env() -> dict[str, str]:
    """This environment less the PYTHONPATH entry that found this package (the Makefile and
    scripts/cluster.sh add it), so a command on a host sees the environment it was given."""
    ours = Path(__file__).resolve().parents[1]
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != ours]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": os.pathsep.join(kept)} if kept else env


def cmd_fault(args: argparse.Namespace, extra: list[str]) -> int:
    if extra or args.state is None:
        raise UserError("fault needs HOST KIND on|off [VALUE]",
                        f"e.g.: {CLI} fault h2 firewall on")
    Cluster.from_env().set_fault(args.host, args.kind, args.state, args.value)
    return Exit.OK


HANDLERS: dict[str, Callable[[argparse.Namespace, list[str]], int]] = {
    "up": cmd_up, "down": cmd_down, "status": cmd_status, "hosts": cmd_hosts, "exec": cmd_exec,
    "slurm": cmd_slurm, "fault": cmd_fault}


def dispatch(argv: list[str]) -> int:
    if not argv:
        print(help_text(), file=sys.stderr, end="")
        return Exit.BAD_INPUT
    if argv[0] in ("-h", "--help", "help"):
        print(help_text(), end="")
        return Exit.OK
    if argv[0] not in COMMANDS:
        raise UserError(f"unknown command '{argv[0]}'",
                        f"commands are {', '.join(COMMANDS)} (see --help)")
    args, extra = build_parser().parse_known_args(argv)
    return HANDLERS[args.command](args, extra)


def main(argv: list[str] | None = None) -> int:
    # ip, sshd and iptables live in sbin, which a minimal PATH lacks; commands run by `exec`
    # get the same PATH.
    os.environ["PATH"] = with_sbin(os.environ.get("PATH"))
    # TERM unwinds like Ctrl-C, so an interrupted `up` removes what it built.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return int(dispatch(sys.argv[1:] if argv is None else argv))
    except UserError as error:
        return render(PROG, error)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`); say nothing more, as a shell tool would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.FAILED


if __name__ == "__main__":
    sys.exit(main())
