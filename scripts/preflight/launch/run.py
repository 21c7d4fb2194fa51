"""`make train` (python -m preflight.train, preflight-train): check the template on this host
(template/check.py: config.toml, DATA/VAL_DATA, model.py's contract; a mistake is one line,
exit 2, nothing launched), preflight the hosts unless the report already vouches for the
hostfile, then launch template/train.py with horovodrun on the healthy hosts, over the interface
the preflight chose, with one process per slot.

Variables (environment, all optional): HOSTFILE (train on this hostfile), HOSTS / INVENTORY
(what to preflight), NP (process count), REPORT (default preflight.json), PREFLIGHT_HOSTFILE
(where the preflight writes the healthy hosts, default hostfile), VENV, and the training values
EPOCHS BATCH_SIZE LR WARMUP OUT SEED RESUME DATA VAL_DATA ACCUMULATE, FP16=1/0 and
MIXED_PRECISION=1/0, passed to template/train.py (template/config.toml says what each means).
BANDWIDTH=1: the preflight also measures each link's bandwidth, from which train.py predicts
the step time and scaling (it prints the prediction before the first epoch).
The job's output is shown tidied (rank 0's lines without mpirun's tags, other ranks' behind
[rank N], no TensorFlow start-up notes; a rank's `error: ...` and mpirun's exit paragraphs are
left to the one line at the end); VERBOSE=1 shows it as horovodrun prints it.
RESUME=runs/<id> trains on the run's own DATA/VAL_DATA (its config.json) unless given.

ELASTIC=1 runs template/train_elastic.py in horovodrun's elastic mode over Gloo: the discovery
(preflight.discover, through scripts/discover_hosts.sh) preflights the same inventory (at most
every DISCOVER_EVERY=5 s), a host that fails drops out and the others go on from the last
committed state, a host that passes again joins after a cool-down. MIN_NP (default 1): fewer
processes than this and the job waits for hosts (HOROVOD_ELASTIC_TIMEOUT, default 600 s) and
then fails; MAX_NP: never more than this. HOROVOD_GLOO_TIMEOUT_SECONDS (default 30) is how long
the others wait on a host that stopped answering before they drop it; SSH_KEEPALIVE (default 5)
seconds apart, three ssh keepalives unanswered end a dead host's session.

Exit codes: horovodrun's; 2 for bad input (one line naming the fix, nothing started); the
preflight's own code when it could not judge the hosts; 128+N when stopped by signal N.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from shutil import rmtree
from typing import BinaryIO

from .. import inventory as inv
from .. import slurm
from ..errors import Exit, UserError, render
from ..proc import KILL_GRACE_S, stop_group
from ..report import read_report, vouches
from . import command, explain
from .config import ROOT, LaunchConfig
from .output import TidyOutput

PROG = "make train"
CHUNK = 65536


def say(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m preflight.train", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(argv)
    os.chdir(ROOT)  # relative paths are the repository's, as make train sees them
    try:
        return launch(LaunchConfig.from_env(os.environ, ROOT))
    except UserError as error:
        return render(PROG, error)
    except KeyboardInterrupt:  # Ctrl-C during the preflight: it stopped too
        return 128 + signal.SIGINT


def launch(cfg: LaunchConfig) -> int:
    """The whole job; its scratch folder (the ssh wrapper, the discovery's state, the log) is
    removed at the end."""
    check_template(cfg)
    scratch = Path(tempfile.mkdtemp(prefix="train-"))
    try:
        try:
            hostfile = choose_hostfile(cfg)
        except PreflightFailed as failed:  # it said why; its exit code says how
            return failed.code
        np, interface = command.settings(read_report(cfg.report), hostfile, cfg.np, cfg.elastic)
        if cfg.elastic:
            command.check_elastic_np(cfg, np)
        env = command.environment(cfg, os.environ, scratch, root_user=os.geteuid() == 0)
        argv = command.horovodrun_argv(cfg, np, interface, hostfile)
        say(shlex.join(argv))
        log = scratch / "train.log"
        rc, stopped_by = run_teed(argv, env, cfg.root, log, tidy=TidyOutput(raw=cfg.verbose))
        if stopped_by is not None:
            say(f"stopped ({signal.Signals(stopped_by).name}), and horovodrun's processes with "
                f"it{explain.resume_hint(log.read_text(errors='replace'), cfg.elastic)}")
        elif rc != 0:
            say(explain.failure(log.read_text(errors="replace"), rank_hosts(hostfile),
                                cfg.elastic, cfg.least_np))
        return rc
    finally:
        rmtree(scratch, ignore_errors=True)


def check_template(cfg: LaunchConfig) -> None:
    """template/check.py on this host, before any preflight or launch: a mistake in the
    configuration, the data or model.py is one line here, not one per rank after the launch."""
    script = cfg.root / "template" / "check.py"
    proc = subprocess.run([str(cfg.python), str(script), *cfg.training_args()], cwd=cfg.root,
                          capture_output=True, text=True)
    for note in proc.stdout.splitlines():
        say(note)
    if proc.returncode == 0:
        return
    said = [line.removeprefix("error: ") for line in proc.stderr.splitlines()
            if line.startswith("error: ")]
    if said:
        raise UserError(said[-1])
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise UserError(f"the template does not load ({last})",
                    f"run {script.relative_to(cfg.root)} with the venv's python to see where")


class PreflightFailed(Exception):
    """The preflight could not judge the hosts (bad input, a crash): its exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def choose_hostfile(cfg: LaunchConfig) -> Path:
    """The hostfile to launch on: HOSTFILE where the report vouches for it, else the one the
    preflight writes."""
    output = cfg.preflight_hostfile
    if cfg.hostfile is not None:
        # INTERFACE= asks for a network the report may not have checked: a new preflight.
        if report_vouches(cfg.report, cfg.hostfile) and cfg.interface is None:
            say(f"{cfg.report} vouches for {cfg.hostfile}; launching without a new preflight")
            return cfg.hostfile
        # A hostfile from elsewhere is checked as the inventory; the healthy hosts go to a new
        # file, so the user's own file is never rewritten.
        if cfg.hostfile.resolve() == output.resolve():
            output = Path("hostfile.healthy")
        say(f"checking {cfg.hostfile} with the preflight first")
        inventory = ["--inventory", str(cfg.hostfile)]
    else:
        inventory = cfg.preflight_inventory_args()
    mode = ["--elastic"] if cfg.elastic else []  # Gloo: one name per host, strictly
    mode += ["--bandwidth"] if cfg.bandwidth else []
    mode += ["--interface", cfg.interface] if cfg.interface else []
    rc = subprocess.run([str(cfg.python), "-m", "preflight", *inventory, *mode, "--hostfile",
                         str(output), "--report", str(cfg.report)], cwd=cfg.root).returncode
    if rc == Exit.SOME_OUT:
        if not has_hosts(output):
            raise UserError("no host passed the preflight",
                            "fix the failures above, then make train again")
        say("some hosts failed the preflight (above); training on the healthy ones")
        say_slurm_exclude(cfg.report)
    elif rc != Exit.OK:
        raise PreflightFailed(128 - rc if rc < 0 else rc)
    return output


def say_slurm_exclude(report: Path) -> None:
    """Inside a Slurm job, the --exclude= option that keeps the next submission off the hosts
    that failed (the allocation's node names are the preflight's hosts)."""
    if "SLURM_JOB_ID" not in os.environ:
        return
    try:
        option = slurm.exclude_option(slurm.failed_hosts(read_report(report)))
    except UserError:
        return
    if option:
        say(f"Slurm job {os.environ['SLURM_JOB_ID']}: next time leave them out: sbatch {option} "
            f"... (make submit EXCLUDE={option.split('=', 1)[1]})")


def report_vouches(report: Path, hostfile: Path) -> bool:
    try:
        return vouches(read_report(report), hostfile)
    except UserError:  # no report, or a broken one: the preflight writes a new one
        return False


def has_hosts(hostfile: Path) -> bool:
    try:
        return bool(inv.read_hostfile(hostfile).hosts)
    except inv.InventoryError:
        return False


def rank_hosts(hostfile: Path) -> list[str]:
    try:
        return inv.read_hostfile(hostfile).rank_hosts()
    except inv.InventoryError:
        return []


class Stopped(Exception):
    """The launcher was told to stop (SIGTERM, SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run_teed(argv: list[str], env: dict[str, str], cwd: Path, log: Path,
             out: BinaryIO | None = None, tidy: TidyOutput | None = None
             ) -> tuple[int, int | None]:
    """Runs the job in a process group of its own, its output (stdout and stderr together) into
    log and, tidied (output.py), to our stdout. Ctrl-C, SIGTERM or SIGHUP here stop its whole
    group: horovodrun, mpirun and the ranks on this host. Returns the exit code (128+N for
    signal N) and the signal that stopped us, if one did."""
    out = out or sys.stdout.buffer
    tidy = tidy or TidyOutput(raw=True)
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    try:
        with log.open("wb") as kept:
            try:
                proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_die_with_parent)
            except OSError as exc:
                raise UserError(f"cannot start {argv[0]} ({exc})", "run make setup") from exc
            try:
                while chunk := os.read(proc.stdout.fileno(), CHUNK):
                    kept.write(chunk)  # first: what the terminal shows is in the log
                    out.write(tidy.feed(chunk))
                    out.flush()
                out.write(tidy.flush())
                out.flush()
                rc = proc.wait()
            except (KeyboardInterrupt, Stopped) as stop:
                signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
                for sig in previous:  # a second Ctrl-C must not cut the clean-up short
                    signal.signal(sig, signal.SIG_IGN)
                interrupt(proc)
                rest = _drain(proc)
                kept.write(rest)
                out.write(tidy.feed(rest) + tidy.flush())
                out.flush()
                return 128 + signum, signum
            finally:
                proc.stdout.close()
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)
    return (128 - rc if rc < 0 else rc), None


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C for the job's group (horovodrun cleans up on it), then TERM and KILL to whatever
    is left of the group."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=KILL_GRACE_S)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    stop_group(proc)  # the ranks and helpers of the group that outlived horovodrun


def _drain(proc: subprocess.Popen) -> bytes:
    os.set_blocking(proc.stdout.fileno(), False)
    try:
        return proc.stdout.read() or b""
    except OSError:
        return b""


def _raise_stopped(signum: int, _frame) -> None:
    raise Stopped(signum)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before horovodrun starts: TERM it when the launcher dies (even by KILL),
    since its own process group does not get the launcher's signals."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
