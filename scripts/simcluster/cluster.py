"""`Cluster`: build, inspect, enter, break and remove one simulated cluster. The command line
(__main__.py) and the tests call the same methods."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from preflight.errors import Exit, UserError

from . import faults, net, slurm, sshconfig, sshd
from .options import UpOptions
from .settings import CLI, DATA_IFNAME, DEFAULT_PREFIX, PROG, UP_HINT, Settings, bad_host
from .state import Host, State, dir_is_foreign, mark_ours, read_state, state_is_ours, write_state
from .system import locked, need_root, pid_is_ours, read_pid, run, stop_pids, tool, warn, with_sbin

Log = Callable[[str], None]
ROW = "{:<5} {:<12} {:<10} {:<14} {:<14} {}"
LOCK_WAIT_S = 300


def print_line(line: str) -> None:
    print(line, flush=True)  # flushed: a caller reading a pipe sees progress as it happens


class Cluster:
    """One simulated cluster, named by its prefix (namespaces <prefix>-h1..) and state directory.

    `up`, `down` and `fault` take a per-prefix lock, so two of them never interleave; progress
    goes to `log`, one line at a time.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, state_dir: str | Path | None = None,
                 log: Log = print_line) -> None:
        self.settings = Settings.make(prefix, state_dir)
        self.log = log

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, log: Log = print_line) -> Cluster:
        """The cluster HVSIM_PREFIX and HVSIM_DIR name (default: hvsim in /tmp/hvsim)."""
        settings = Settings.from_env(env)
        return cls(settings.prefix, settings.state_dir, log)

    @property
    def prefix(self) -> str:
        return self.settings.prefix

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    def say(self, message: str) -> None:
        self.log(f"{PROG}: {message}")

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.settings.lock_file, LOCK_WAIT_S,
                      f"another up/down/fault of cluster {self.prefix} is running")

    # --- reading ---------------------------------------------------------------------------

    def state(self) -> State:
        """The built cluster; a UserError (exit 1) when none is up."""
        state = read_state(self.settings)
        if state is None or not net.ns_exists(self.settings.switch_ns):
            raise UserError(f"no cluster is up (state dir {self.state_dir})", UP_HINT,
                            Exit.FAILED)
        return state

    @property
    def hosts(self) -> list[str]:
        return self.state().names

    @property
    def addresses(self) -> dict[str, str]:
        return {h.name: h.address for h in self.state().hosts}

    @property
    def interfaces(self) -> dict[str, str]:
        return {h.name: h.ifname for h in self.state().hosts}

    def healthy(self, state: State) -> bool:
        """Every namespace, hostname holder and sshd of the recorded cluster is there, and
        every Slurm daemon where it has Slurm."""
        return net.ns_exists(self.settings.switch_ns) and all(
            net.ns_exists(h.namespace) and sshd.uts_pid(self.settings, h.name)
            and sshd.sshd_pid(self.settings, h.name) for h in state.hosts) and (
            not state.options.slurm or slurm.healthy(self.settings, state.names))

    def status_lines(self) -> list[str]:
        state = self.state()
        return ([f"{PROG}: cluster up: {state.options.describe(state.prefix)}"]
                + self.table(state) + (state.fault_lines() or ["faults: none"])
                + (slurm.status_lines(self.settings, state.names) if state.options.slurm
                   else []))

    def table(self, state: State) -> list[str]:
        lines = [ROW.format("HOST", "NAMESPACE", "INTERFACE", "ADDRESS", "SSHD", "EXTRAS")]
        for host in state.hosts:
            pid = sshd.sshd_pid(self.settings, host.name)
            lines.append(ROW.format(host.name, host.namespace, host.ifname, host.address,
                                    f"up (pid {pid})" if pid else "down",
                                    " ".join(self._extras(host)) or "-"))
        return lines

    def _extras(self, host: Host) -> list[str]:
        """What the realism options and faults changed on a host, for the table."""
        ns = host.namespace
        links = [line.split() for line in
                 run("ip", "-n", ns, "-br", "addr", check=False).stdout.splitlines() if line]
        extras = [name for name in (fields[0].split("@")[0] for fields in links)
                  if name in ("docker0", "eth1")]
        # The data network has no names, so its address is shown: eth2=10.233.0.12/24.
        extras += [f"{DATA_IFNAME}={fields[2]}" for fields in links
                   if fields[0].split("@")[0] == DATA_IFNAME and len(fields) > 2]
        shown = run("ip", "-n", ns, "link", "show", host.ifname, check=False).stdout
        mtu = re.search(r"mtu [0-9]+", shown)
        if mtu and mtu.group() != "mtu 1500":
            extras.append(mtu.group())
        hosts_file = self.settings.etc_dir(host.name) / "hosts"
        with contextlib.suppress(OSError):
            if re.search(r"^127\.0\.1\.1\s", hosts_file.read_text(), re.M):
                extras.append("127.0.1.1-in-hosts")
        name = sshd.hostname_of(self.settings, host.name)
        if name and name != host.name:
            extras.append(f"hostname={name}")
        mount = sshd.program_mount(self.settings, host.name)
        if mount:  # /usr/bin/orted=false-over-ssh, or =orted-hang-over-ssh
            extras.append(f"{mount.program}={Path(mount.stand_in).name}-over-ssh")
        return extras

    # --- up and down -----------------------------------------------------------------------

    def up(self, options: UpOptions | int | None = None) -> State:
        """Builds the cluster and waits until every sshd takes a key login. Idempotent: the
        same cluster, up and healthy, is left as it is; anything else is torn down first.
        If building fails or is interrupted, what was built so far is removed."""
        if not isinstance(options, UpOptions):
            options = UpOptions.parse(None if options is None else str(options))
        need_root()
        if options.slurm:
            slurm.ensure_installed(self.say)  # before anything is torn down or built
        with self._lock():
            state = read_state(self.settings)
            if state and state.options == options and state.prefix == self.prefix \
                    and self.healthy(state):
                return self._already_up(state)
            self._clear_for(options)
            try:
                state = self._build(options)
            except BaseException:
                warn("up failed; removing what was built")
                with contextlib.suppress(Exception):
                    self._teardown()
                raise
        self.say("cluster up: ssh from h1 to every host works "
                 "(try: sudo make cluster-exec HOST=h1 CMD='ssh h2 hostname')")
        for line in self.table(state):
            self.log(line)
        return state

    def _already_up(self, state: State) -> State:
        # With a fault on (a link down, say) logins may fail on purpose; alive sshds suffice.
        if not state.faults:
            sshd.wait_ready(self.settings, state.names)
            if state.options.slurm:
                slurm.wait_idle(self.settings, state.names)
        self.say(f"cluster already up ({len(state.hosts)} hosts, same options); "
                 "every sshd is alive" + (" and every Slurm daemon" if state.options.slurm
                                          else ""))
        for line in self.table(state) + state.fault_lines():
            self.log(line)
        return state

    def _clear_for(self, options: UpOptions) -> None:
        settings = self.settings
        if dir_is_foreign(settings):
            raise UserError(f"{self.state_dir} exists and is not this cluster's "
                            f"({self.prefix}) state",
                            "remove it or set HVSIM_DIR to another path", Exit.FAILED)
        if (net.our_namespaces(settings) or self.state_dir.exists()
                or net.our_etc_dirs(settings)):
            self.say("an earlier or different cluster is there; tearing it down first")
            self._teardown()

    def _build(self, options: UpOptions) -> State:
        # Said here, inside up()'s try: a TERM right after this line still removes what was
        # built (tests/cluster/test_cluster_lifecycle.py sends one as soon as it reads it).
        self.say(f"building {options.hosts} hosts in namespaces {self.prefix}-h1.."
                 f"{self.prefix}-h{options.hosts} (state in {self.state_dir})")
        settings = self.settings
        mark_ours(settings)  # from now on `down` may delete the state directory
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation
        sshd.make_client_key(settings)
        net.make_switch(settings)
        if options.data_net:
            net.make_data_switch(settings)
        net.raise_neighbour_table(settings, options.hosts)
        for index, host in enumerate(options.names, start=1):
            self._build_host(options, index, host)
        sshd.write_client_config(settings, options.hosts)
        for host in options.names:
            sshd.start_uts_holder(settings, host)
            sshd.start_sshd(settings, host)
        sshconfig.install_include(settings)
        sshd.wait_ready(settings, options.names)
        if options.slurm:
            slurm.start(settings, options.names, options.slurm_cpus, self.say)
        state = State.new(settings, options)
        write_state(settings, state)  # last: its presence means completely built
        return state

    def _build_host(self, options: UpOptions, index: int, host: str) -> None:
        settings = self.settings
        net.make_host_net(settings, index, options.ifname_of(host), options.mtu.get(host))
        if host in options.decoy_bridge:
            net.make_decoy_bridge(settings, host)
        if host in options.second_if:
            net.make_second_if(settings, index)
        if host in options.data_net:
            net.make_data_if(settings, index)
        net.write_hosts_file(settings, index, options.hosts, host in options.debian_hosts)
        if options.slurm:
            slurm.link_etc(settings, host)  # before sshd starts, so its sessions see it too
        sshd.make_host_ssh(settings, index)

    def down(self) -> list[str]:
        """Removes everything the cluster made, also of a half-built one; returns (and logs)
        one line per thing removed."""
        need_root()
        with self._lock():
            removed = self._teardown()
        if not removed:
            self.say("nothing to remove")
            return removed
        for line in removed:
            self.log(line)
        self.say("cluster down")
        return removed

    def _teardown(self) -> list[str]:
        """Pidfile processes first (sshds, hostname holders), then whatever else is left in the
        namespaces, the namespaces, /etc/netns, the ssh config block and the state directory."""
        settings = self.settings
        namespaces = net.our_namespaces(settings)
        # Slurm first: its slurmds would otherwise log the controller's going as node failures.
        removed = slurm.stop(settings) + self._stop_recorded_processes()
        removed += net.delete_namespaces(namespaces)
        removed += net.remove_etc_dirs(settings)
        removed += sshconfig.remove_include(settings)
        removed += net.restore_neighbour_table(settings)
        # Only a directory made for this prefix (it has the marker) is deleted whole; an empty
        # one is what an `up` interrupted before it wrote the marker leaves.
        if state_is_ours(settings) or _is_empty_dir(self.state_dir):
            shutil.rmtree(self.state_dir, ignore_errors=True)
            removed.append(f"removed {self.state_dir}")
        return removed

    def _stop_recorded_processes(self) -> list[str]:
        stopped = []
        for kind in ("sshd", "uts"):
            for pidfile in sorted(self.state_dir.glob(f"h*/{kind}.pid")):
                host, pid = pidfile.parent.name, read_pid(pidfile)
                if pid_is_ours(pid, str(pidfile.parent / "sshd_config")) or pid_is_ours(
                        pid, self.settings.uts_name(host) + " "):
                    stop_pids([pid])
                    stopped.append(f"stopped {kind} of {host} (pid {pid})")
        return stopped

    # --- on a host ---------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        state = self.state()
        found = state.host(name)
        if found is None:
            raise bad_host(name, state.names)
        return found

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """argv as run on `host`: in its network namespace (with its /etc/hosts, which
        `ip netns exec` mounts) and its UTS namespace (its hostname). Both programs exec, so
        stdin, stdout, the exit status and signals reach the command itself."""
        if not argv:
            raise UserError("exec needs a host and a command", "e.g.: exec h1 hostname")
        need_root()
        target = self.host(host)
        holder = sshd.uts_pid(self.settings, host)
        if holder is None:
            raise UserError(f"host {host} is not running (its hostname holder is gone)",
                            UP_HINT, Exit.FAILED)
        return [tool("ip"), "netns", "exec", target.namespace, tool("nsenter"),
                "-t", str(holder), "-u", "--", *argv]

    def exec(self, host: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        """Runs argv on `host` with subprocess.run(**kwargs); output is captured as text unless
        stdout, stderr or capture_output say otherwise. The sbin directories are added to PATH,
        as the command line does."""
        if not {"stdout", "stderr", "capture_output"} & kwargs.keys():
            kwargs["capture_output"] = True
        kwargs.setdefault("text", True)
        env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
        kwargs["env"] = {**env, "PATH": with_sbin(env.get("PATH"))}
        return subprocess.run(self.exec_argv(host, argv), **kwargs)

    def slurm_login_node(self) -> str:
        """The host where Slurm's commands run as on a login node (h1); a UserError when the
        cluster was built without --slurm."""
        if not self.state().options.slurm:
            raise UserError(f"cluster {self.prefix} has no Slurm",
                            f"build it with: {CLI} up N --slurm", Exit.FAILED)
        return slurm.CONTROLLER

    # --- faults ------------------------------------------------------------------------------

    def set_fault(self, host: str, kind: str, state: str, value: str | int | None = None) -> str:
        """Turns a fault on or off (idempotent) and records it; returns the line it logged."""
        check_fault_request(kind, state)
        need_root()
        target = self.host(host)
        value = faults.check_value(kind, state, None if value is None else str(value), host,
                                   self.hosts)
        with self._lock():
            # Read under the lock: the faults already on decide how some faults are undone.
            if kind in slurm.FAULTS:
                slurm.FAULTS[kind](self.settings, self.state(), target, state == "on", value)
            else:
                faults.apply(self.settings, self.state(), target, kind, state == "on", value)
            self._record_fault(host, kind, value if state == "on" else None)
        shown = f" ({value})" if state == "on" and value else ""
        self.say(f"{host}: fault {kind} {state}{shown}")
        return f"{host}: fault {kind} {state}{shown}"

    def _record_fault(self, host: str, kind: str, value: str | None) -> None:
        state = self.state()  # read again under the lock: another fault may have changed it
        state.faults.pop(f"{host} {kind}", None)
        if value is not None:
            state.faults[f"{host} {kind}"] = value
        write_state(self.settings, state)

    def fault(self, host: str, kind: str, state: str = "on", value: str | int | None = None,
              check: bool = True) -> Fault:
        """Turns a fault on (or off) now. Used in a `with`, a fault turned on is turned off
        again on the way out, whatever happened inside. With check=False a failure is
        returned in `.error` instead of raised."""
        fault = Fault(self, host, kind, state, value)
        try:
            fault.message = self.set_fault(host, kind, state, value)
        except UserError as error:
            if check:
                raise
            fault.error = error
        return fault


# The faults of faults.py and the one of slurm.py (it keeps Slurm's ports open).
FAULT_KINDS = faults.FAULT_KINDS + slurm.FAULT_KINDS


def check_fault_request(kind: str, state: str) -> None:
    if kind not in FAULT_KINDS:
        raise UserError(f"unknown fault kind '{kind}'", f"kinds are: {' '.join(FAULT_KINDS)}")
    if state not in ("on", "off"):
        raise UserError(f"fault state must be 'on' or 'off', not '{state}'",
                        "e.g.: fault h2 firewall on")


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


@dataclass
class Fault:
    """A fault as set by `Cluster.fault`."""

    cluster: Cluster
    host: str
    kind: str
    state: str
    value: str | int | None = None
    message: str = ""
    error: UserError | None = None

    @property
    def returncode(self) -> int:
        """What the command line would have exited with."""
        return self.error.code if self.error else int(Exit.OK)

    def __enter__(self) -> Fault:
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.state == "on":
            self.cluster.set_fault(self.host, self.kind, "off", self.value)

