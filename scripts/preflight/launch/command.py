"""From a preflight report and the hostfile it vouches for to horovodrun's command line and
environment, static (Open MPI) and elastic (Gloo)."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path

from .. import inventory as inv
from ..errors import UserError
from ..proc import job_env
from ..report import vouches
from .config import LaunchConfig

# A host whose processes failed is shut out for 30 s at first, longer each time it fails again
# (at most 300 s); without a range horovodrun shuts it out for good.
BLACKLIST_COOLDOWN_S = (30, 300)
SSH_ALIVE_COUNT = 3  # keepalives unanswered before ssh gives up on a host
# Open MPI's ring allreduce for the job (static runs). Left to itself, Open MPI picks an
# algorithm by message and world size; on 3 hosts it picked one that carried ~4x the gradient
# bytes over each link: 0.92 s a step at 100 Mbit/s against 0.40 s with the ring (measured on
# throttled simulated links). The ring is bandwidth-optimal, Horovod's fused buffers are large,
# and it is the algorithm preflight.scaling predicts.
RING_ALLREDUCE = ("--mca", "coll_tuned_use_dynamic_rules", "1",
                  "--mca", "coll_tuned_allreduce_algorithm", "4")


def hostfile_slots(hostfile: Path) -> int:
    """All slots of the hostfile the job launches on, read by the one hostfile parser."""
    if not Path(hostfile).is_file():
        raise UserError(f"hostfile {hostfile} does not exist",
                        "run make preflight, or give HOSTFILE=path of an existing file")
    return inv.read_hostfile(hostfile, "the hostfile").slots


def settings(report: dict, hostfile: Path, np: int | None,
             gloo: bool = False) -> tuple[int, str]:
    """The process count and what horovodrun's --network-interfaces gets, for a hostfile the
    report vouches for."""
    slots = hostfile_slots(hostfile)
    if not vouches(report, hostfile):
        raise UserError(f"the preflight report does not vouch for {hostfile} (it was changed "
                        "or written elsewhere)", f"run make preflight INVENTORY={hostfile}")
    interface = network_interfaces(report, gloo)
    np = slots if np is None else np
    if np < 1:
        raise UserError(f"NP={np} must be at least 1", "e.g. NP=2, or leave NP out")
    if np > slots:
        raise UserError(f"NP={np} is more than the {slots} slots in {hostfile}",
                        "lower NP or add hosts/slots to the inventory and run make preflight")
    return np, interface


def network_interfaces(report: dict, gloo: bool) -> str:
    """The interface's name; where hosts name it differently (eth0 here, ens5 there), the
    subnet. horovodrun hands the value to Open MPI's btl_tcp_if_include, which takes a subnet
    and, given a list of names, hangs on a host that lacks one of them. Gloo (elastic runs)
    takes a single name for every host, so differing names cannot go there."""
    interface, cidr = report.get("interface"), report.get("interface_cidr")
    if not interface:
        raise UserError("the preflight report names no interface", "run make preflight again")
    if "," not in interface:
        return interface
    if gloo:
        raise UserError(f"the hosts name the job's interface differently ({interface}), and "
                        "Horovod's Gloo takes one name for all",
                        "give it the same name on every host, or train without ELASTIC=1")
    if not cidr:
        raise UserError("the preflight report names no subnet", "run make preflight again")
    return cidr


def check_elastic_np(cfg: LaunchConfig, np: int) -> None:
    """MIN_NP and MAX_NP against the processes the preflight found."""
    if cfg.least_np > np:
        raise UserError(f"MIN_NP={cfg.least_np} is more than the {np} processes the preflight "
                        "found", "lower MIN_NP, or add hosts and make train again")
    if cfg.max_np is not None and cfg.max_np < np:
        raise UserError(f"MAX_NP={cfg.max_np} is less than NP={np}",
                        f"raise MAX_NP or set NP={cfg.max_np}")


def horovodrun_argv(cfg: LaunchConfig, np: int, interface: str, hostfile: Path) -> list[str]:
    """horovodrun -np N (--hostfile H | elastic options) --network-interfaces I python train.py;
    an elastic job takes its hosts from the discovery alone (horovodrun refuses both)."""
    argv = [str(cfg.horovodrun), "-np", str(np)]
    if not cfg.elastic:
        argv += ["--hostfile", str(hostfile), f"--mpi-args={' '.join(RING_ALLREDUCE)}"]
    else:
        argv += ["--gloo", "--min-np", str(cfg.least_np)]
        if cfg.max_np is not None:
            argv += ["--max-np", str(cfg.max_np)]
        low, high = BLACKLIST_COOLDOWN_S
        # horovodrun runs the discovery through a shell, on this machine, from this directory.
        argv += ["--blacklist-cooldown-range", str(low), str(high),
                 "--host-discovery-script", shlex.quote(str(cfg.discovery_script))]
    return argv + ["--network-interfaces", interface, str(cfg.python), str(cfg.train_script),
                   *cfg.training_args()]


def environment(cfg: LaunchConfig, base: Mapping[str, str], scratch: Path,
                root_user: bool) -> dict[str, str]:
    """horovodrun's environment: the job's (proc.job_env: Keras 2, TensorFlow's notes once, Open
    MPI as root), and for an elastic run the ssh with keepalives first on PATH and the
    discovery's DISCOVER_* variables."""
    env = job_env(base=base, root=root_user)
    if not cfg.elastic:
        return env
    env["PATH"] = f"{ssh_with_keepalive(cfg, base.get('PATH', os.defpath), scratch)}" \
                  f"{os.pathsep}{base.get('PATH', os.defpath)}"
    for name in ("DISCOVER_HOSTS", "DISCOVER_INVENTORY"):
        env.pop(name, None)
    env.update(cfg.discovery_env())
    env["VENV"] = str(cfg.venv.resolve())  # the discovery shim finds the venv from anywhere
    env["DISCOVER_STATE"] = str(scratch / "discovered")  # lets it say once why a host dropped
    if cfg.discover_every is not None:
        env["DISCOVER_EVERY"] = f"{cfg.discover_every:g}"
    if cfg.discover_timeout is not None:
        env["DISCOVER_TIMEOUT"] = f"{cfg.discover_timeout:g}"
    return env


def ssh_with_keepalive(cfg: LaunchConfig, path: str, scratch: Path) -> Path:
    """A folder holding an `ssh` that sends keepalives, for the front of horovodrun's PATH.

    The elastic driver counts a host out only when its ssh session to the host ends, and ssh
    waits on a dead link for ever unless it sends keepalives. horovodrun takes no ssh options,
    so it finds this ssh first on PATH: three keepalives SSH_KEEPALIVE seconds apart unanswered
    and the session ends, the host's process counts as failed and the others go on without it.
    """
    real = shutil.which("ssh", path=path)
    if real is None:
        raise UserError("no ssh client", "install openssh-client (see make setup)")
    folder = scratch / "bin"
    folder.mkdir(exist_ok=True)
    wrapper = folder / "ssh"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(real)} -o ServerAliveInterval="
                       f"{cfg.ssh_keepalive} -o ServerAliveCountMax={SSH_ALIVE_COUNT} \"$@\"\n")
    wrapper.chmod(0o755)
    return folder
