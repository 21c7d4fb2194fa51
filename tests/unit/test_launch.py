"""make train's launcher: make's variables checked into one LaunchConfig, what it takes from the
preflight report (the hostfile it vouches for, NP, interface), horovodrun's command line and
environment, the one-line explanation of a failed job, and Ctrl-C stopping the whole job."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preflight.errors import Exit, UserError
from preflight.launch import command, explain
from preflight.launch.config import LaunchConfig
from preflight.launch.run import PreflightFailed, choose_hostfile
from preflight.report import read_report, vouches

ROOT = Path(__file__).resolve().parents[2]


def write_pair(tmp_path: Path, hostfile_text: str, interface: str = "eth0") -> tuple[Path, Path]:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(hostfile_text)
    report = tmp_path / "preflight.json"
    digest = hashlib.sha256(hostfile_text.encode()).hexdigest()
    report.write_text(json.dumps({"ok": True, "interface": interface,
                                  "interface_cidr": "10.0.0.0/24",
                                  "provenance": {"hostfile_sha256": digest}}))
    return hostfile, report


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A stand-in venv: the config checks only that its python is executable."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    python = tmp_path / "venv" / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    return tmp_path / "venv"


def config(venv: Path, **variables: str) -> LaunchConfig:
    return LaunchConfig.from_env({"VENV": str(venv), **variables}, root=ROOT)


def refused(venv: Path, **variables: str) -> UserError:
    with pytest.raises(UserError) as info:
        config(venv, **variables)
    assert info.value.code == Exit.BAD_INPUT
    # Every refusal says what to do: in the remedy, or (the hostfile parser's) after a ';'/'e.g.'
    assert info.value.remedy or "; " in info.value.message or "e.g." in info.value.message
    assert "\n" not in str(info.value)
    return info.value


# --- make's variables -> LaunchConfig ---------------------------------------------------------

def test_variables_become_one_config_and_the_training_flags(venv: Path) -> None:
    cfg = config(venv, HOSTS="h1:2,h2:2", NP="3", REPORT="r.json", EPOCHS="5", BATCH_SIZE="64",
                 LR="0.01", SEED="7", OUT="out", WARMUP="", ELASTIC="", SSH_KEEPALIVE="")
    assert (cfg.hosts, cfg.np, cfg.report, cfg.elastic, cfg.ssh_keepalive) == (
        "h1:2,h2:2", 3, Path("r.json"), False, 5)
    assert cfg.warmup is None  # make passes an empty value as unset
    assert cfg.training_args() == ["--epochs", "5", "--batch-size", "64", "--lr", "0.01",
                                   "--out", "out", "--seed", "7",
                                   "--network-report", str(ROOT / "r.json")]
    knobs = config(venv, DATA=str(ROOT / "template"), ACCUMULATE="2", FP16="1",
                   MIXED_PRECISION="0")
    assert knobs.training_args()[:6] == ["--data", str(ROOT / "template"), "--accumulate", "2",
                                         "--fp16-allreduce", "--no-mixed-precision"]
    assert refused(venv, DATA="no/such/folder").message.startswith("DATA=no/such/folder names")
    assert "neither 1 nor 0" in refused(venv, FP16="yes").message
    assert cfg.preflight_inventory_args() == ["--hosts", "h1:2,h2:2"]
    assert config(venv, INVENTORY="inv", HOSTS="h1").preflight_inventory_args() == [
        "--inventory", "inv"]
    assert config(venv).preflight_inventory_args() == []
    assert (cfg.python, cfg.horovodrun) == (venv / "bin" / "python", venv / "bin" / "horovodrun")


def test_a_missing_venv_says_run_make_setup(tmp_path: Path) -> None:
    error = refused(tmp_path / "nowhere")
    assert error.message == f"no venv at {tmp_path / 'nowhere'}"
    assert error.remedy == "run make setup"


def test_resume_of_a_folder_without_checkpoints_is_refused(venv: Path, tmp_path: Path) -> None:
    error = refused(venv, RESUME=str(tmp_path))
    assert error.message == f"RESUME={tmp_path} has no checkpoints/ folder"
    assert "runs/20260101-120000" in error.remedy
    (tmp_path / "checkpoints").mkdir()
    cfg = config(venv, RESUME=str(tmp_path), ELASTIC="1")
    assert cfg.training_args()[:2] == ["--resume", str(tmp_path)]
    assert cfg.train_script.name == "train_elastic.py"


@pytest.mark.parametrize(("variables", "message", "remedy"), [
    ({"ELASTIC": "yes"}, "ELASTIC=yes is neither 1 nor 0", "use ELASTIC=1"),
    ({"MIN_NP": "2"}, "MIN_NP and MAX_NP are for elastic runs", "add ELASTIC=1"),
    ({"ELASTIC": "0", "MAX_NP": "2"}, "MIN_NP and MAX_NP are for elastic runs", "add ELASTIC=1"),
    ({"ELASTIC": "1", "MIN_NP": "0"}, "MIN_NP=0 must be a whole number of at least 1",
     "MIN_NP=2"),
    ({"ELASTIC": "1", "MAX_NP": "two"}, "MAX_NP=two must be a whole number of at least 1",
     "MAX_NP=2"),
    ({"NP": "0"}, "NP=0 must be a whole number of at least 1", "leave NP out"),
    ({"NP": "-3"}, "NP=-3 must be a whole number of at least 1", "leave NP out"),
    ({"ELASTIC": "1", "SSH_KEEPALIVE": "0"}, "SSH_KEEPALIVE=0 must be a whole number",
     "SSH_KEEPALIVE=2"),
    ({"ELASTIC": "1", "DISCOVER_EVERY": "soon"}, "DISCOVER_EVERY=soon must be a number",
     "DISCOVER_EVERY=5"),
])
def test_bad_values_are_refused_with_the_fix(venv: Path, variables: dict, message: str,
                                             remedy: str) -> None:
    error = refused(venv, **variables)
    assert error.message == message or error.message.startswith(message)
    assert remedy in error.remedy


def test_elastic_values_are_kept(venv: Path) -> None:
    cfg = config(venv, ELASTIC="1", MIN_NP="2", MAX_NP="4", SSH_KEEPALIVE="3",
                 DISCOVER_EVERY="0")
    assert (cfg.elastic, cfg.min_np, cfg.least_np, cfg.max_np, cfg.ssh_keepalive,
            cfg.discover_every) == (True, 2, 2, 4, 3, 0.0)
    assert config(venv, ELASTIC="1").least_np == 1


def test_missing_and_empty_hostfiles_name_the_fix(venv: Path, tmp_path: Path) -> None:
    error = refused(venv, HOSTFILE=str(tmp_path / "nope"))
    assert error.message == f"HOSTFILE={tmp_path / 'nope'} does not exist"
    assert "leave HOSTFILE out and the preflight writes one" in error.remedy
    empty = tmp_path / "empty"
    empty.write_text("# only a comment\n\n")
    assert "no hosts in the inventory; add lines like 'h1 slots=2'" in str(
        refused(venv, HOSTFILE=str(empty)))


def test_a_hostfile_with_bad_slots_is_bad_input_naming_the_line(venv: Path,
                                                                tmp_path: Path) -> None:
    # The old launcher counted 'slots=abc' as one slot; the one hostfile parser refuses it.
    bad = tmp_path / "hostfile"
    bad.write_text("h1 slots=2\nh2 slots=abc\n")
    text = str(refused(venv, HOSTFILE=str(bad)))
    assert text.startswith(f"HOSTFILE={bad} line 2: slots='abc' for h2")
    assert "slots must be a whole number of at least 1, e.g. 'h2 slots=2'" in text


# --- the report -> NP and interface ------------------------------------------------------------

def test_settings_use_all_slots_and_the_chosen_interface(tmp_path: Path) -> None:
    hostfile, report = write_pair(tmp_path, "h1 slots=2\nh2 slots=3\nh3\n")
    assert command.settings(read_report(report), hostfile, None) == (6, "eth0")
    assert command.settings(read_report(report), hostfile, 4) == (4, "eth0")


def test_names_that_differ_between_hosts_give_mpi_the_subnet_and_gloo_a_refusal(
        tmp_path: Path) -> None:
    hostfile, report = write_pair(tmp_path, "h1 slots=1\nh2 slots=1\n", "eth0,ens5")
    loaded = read_report(report)
    assert command.settings(loaded, hostfile, None) == (2, "10.0.0.0/24")
    with pytest.raises(UserError, match="Gloo takes one name for all") as info:
        command.settings(loaded, hostfile, None, gloo=True)
    assert info.value.remedy == "give it the same name on every host, or train without ELASTIC=1"
    hostfile, report = write_pair(tmp_path, "h1 slots=1\n")
    assert command.settings(read_report(report), hostfile, None, gloo=True) == (1, "eth0")


def test_np_larger_than_the_slots_is_refused_with_the_fix(tmp_path: Path) -> None:
    hostfile, report = write_pair(tmp_path, "h1 slots=2\n")
    with pytest.raises(UserError) as info:
        command.settings(read_report(report), hostfile, 3)
    assert info.value.message == f"NP=3 is more than the 2 slots in {hostfile}"
    assert info.value.remedy.startswith("lower NP")
    assert info.value.code == Exit.BAD_INPUT


def test_a_hostfile_changed_after_the_preflight_is_not_vouched_for(tmp_path: Path) -> None:
    hostfile, report = write_pair(tmp_path, "h1 slots=2\n")
    assert vouches(read_report(report), hostfile)
    hostfile.write_text("h1 slots=2\nh9 slots=2\n")
    assert not vouches(read_report(report), hostfile)
    with pytest.raises(UserError, match="does not vouch") as info:
        command.settings(read_report(report), hostfile, None)
    assert info.value.remedy == f"run make preflight INVENTORY={hostfile}"


def test_a_missing_launch_hostfile_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist") as info:
        command.hostfile_slots(tmp_path / "nope")
    assert info.value.remedy.startswith("run make preflight")


def test_missing_report_says_run_the_preflight(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist") as info:
        read_report(tmp_path / "preflight.json")
    assert info.value.remedy == "run make preflight first"


def test_min_and_max_np_are_checked_against_the_processes_found(venv: Path) -> None:
    with pytest.raises(UserError) as info:
        command.check_elastic_np(config(venv, ELASTIC="1", MIN_NP="5"), 4)
    assert info.value.message == "MIN_NP=5 is more than the 4 processes the preflight found"
    with pytest.raises(UserError) as info:
        command.check_elastic_np(config(venv, ELASTIC="1", MAX_NP="3"), 4)
    assert (info.value.message, info.value.remedy) == ("MAX_NP=3 is less than NP=4",
                                                       "raise MAX_NP or set NP=3")
    command.check_elastic_np(config(venv, ELASTIC="1", MIN_NP="4", MAX_NP="4"), 4)


# --- horovodrun's command line and environment -------------------------------------------------

def test_static_command_line(venv: Path) -> None:
    cfg = config(venv, EPOCHS="3")
    assert command.horovodrun_argv(cfg, 2, "eth0", Path("hostfile")) == [
        str(venv / "bin" / "horovodrun"), "-np", "2", "--hostfile", "hostfile",
        "--mpi-args=--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4",
        "--network-interfaces", "eth0", str(venv / "bin" / "python"),
        str(ROOT / "template" / "train.py"), "--epochs", "3",
        "--network-report", str(ROOT / "preflight.json")]


def test_elastic_command_line_has_gloo_the_bounds_the_cooldown_and_the_discovery(
        venv: Path) -> None:
    argv = command.horovodrun_argv(config(venv, ELASTIC="1", MIN_NP="2", MAX_NP="3"), 3,
                                   "eth0", Path("hostfile"))
    assert argv[1:] == [  # no --hostfile: horovodrun takes it or the discovery, never both
        "-np", "3", "--gloo", "--min-np", "2", "--max-np", "3",
        "--blacklist-cooldown-range", "30", "300",
        "--host-discovery-script", str(ROOT / "scripts" / "discover_hosts.sh"),
        "--network-interfaces", "eth0", str(venv / "bin" / "python"),
        str(ROOT / "template" / "train_elastic.py"),
        "--network-report", str(ROOT / "preflight.json")]
    without_max = command.horovodrun_argv(config(venv, ELASTIC="1"), 1, "eth0", Path("h"))
    assert "--max-np" not in without_max and without_max[4:6] == ["--min-np", "1"]


def test_static_environment_quiets_tensorflow_and_lets_open_mpi_run_as_root(
        venv: Path, tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin", "DISCOVER_HOSTS": "stale"}
    env = command.environment(config(venv), base, tmp_path, root_user=True)
    # Keras 2 from tf_keras in every rank, where the stack has tf_keras (not TF=2.15)
    assert env.get("TF_USE_LEGACY_KERAS") == ("1" if importlib.util.find_spec("tf_keras") else None)
    assert (env["TF_CPP_MIN_LOG_LEVEL"], env["OMPI_ALLOW_RUN_AS_ROOT"],
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"]) == ("2", "1", "1")
    assert env["PATH"] == "/usr/bin:/bin" and env["DISCOVER_HOSTS"] == "stale"
    env = command.environment(config(venv), {**base, "TF_CPP_MIN_LOG_LEVEL": "0"}, tmp_path,
                              root_user=False)
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "0" and "OMPI_ALLOW_RUN_AS_ROOT" not in env
    assert not (tmp_path / "bin").exists()


def test_elastic_environment_puts_an_ssh_with_keepalives_first_and_tells_the_discovery(
        venv: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    hostfile = tmp_path / "hosts"
    hostfile.write_text("h1 slots=1\n")
    cfg = config(venv, ELASTIC="1", HOSTFILE=str(hostfile), HOSTS="ignored:1",
                 SSH_KEEPALIVE="7", DISCOVER_EVERY="2")
    base = {"PATH": os.environ["PATH"], "DISCOVER_HOSTS": "stale:1"}
    env = command.environment(cfg, base, scratch, root_user=False)
    assert env["PATH"] == f"{scratch / 'bin'}:{os.environ['PATH']}"
    wrapper = (scratch / "bin" / "ssh").read_text()
    assert "-o ServerAliveInterval=7 -o ServerAliveCountMax=3" in wrapper
    assert os.access(scratch / "bin" / "ssh", os.X_OK)
    assert "DISCOVER_HOSTS" not in env
    assert env["DISCOVER_INVENTORY"] == str(hostfile.resolve())
    assert env["DISCOVER_STATE"] == str(scratch / "discovered")
    assert env["DISCOVER_EVERY"] == "2"
    assert env["VENV"] == str(venv.resolve())
    env = command.environment(config(venv, ELASTIC="1", HOSTS="h1:1,h2:1"), base, scratch,
                              root_user=False)
    assert (env["DISCOVER_HOSTS"], "DISCOVER_INVENTORY" in env) == ("h1:1,h2:1", False)


def test_elastic_without_an_ssh_client_is_refused(venv: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no ssh client") as info:
        command.environment(config(venv, ELASTIC="1"), {"PATH": str(tmp_path)}, tmp_path,
                            root_user=False)
    assert "openssh-client" in info.value.remedy


# --- a failed job in one line ------------------------------------------------------------------

MPI_KILLED = ("[1,0]<stdout>:run directory /nowhere/runs/1 [1,0]<stdout>:\n"
              "mpirun noticed that process rank 1 with PID 4242 on node h2 exited on signal 9 "
              "(Killed).\n")
MPI_EXITED = ("Primary job  terminated normally, but 1 process returned\n"
              "a non-zero exit code.\n"
              "-------\n"
              "mpirun detected that one or more processes exited with non-zero status...\n\n"
              "  Process name: [[51913,1],2]\n  Exit code:    3\n")
GLOO_FAILED = ("Horovod detected that one or more processes exited with non-zero status, thus "
               "causing the job to be terminated. The first process to do so was:\n"
               "Process name: h3[0]\nExit code: 1\n")


def test_a_killed_rank_is_named_with_its_host_and_signal() -> None:
    assert explain.failure(MPI_KILLED) == "rank 1 on h2 was killed by signal 9 (Killed)"


def test_a_rank_that_exited_is_placed_on_its_host_by_the_hostfile() -> None:
    assert explain.failure(MPI_EXITED, ["h1", "h1", "h2"]) == "rank 2 on h2 exited with code 3"
    assert explain.failure(MPI_EXITED, []) == "rank 2 on ? exited with code 3"


def test_an_elastic_failure_names_the_host_and_slot() -> None:
    assert explain.failure(GLOO_FAILED, elastic=True) == \
        "the process in slot 0 on h3 exited with code 1"


def test_an_elastic_timeout_says_too_few_hosts_passed() -> None:
    log = ("RuntimeError: Timed out waiting for enough resources to run at least 2 "
           "processes\n")
    assert explain.failure(log, elastic=True, min_np=2).startswith(
        "fewer than MIN_NP=2 slots passed the preflight within HOROVOD_ELASTIC_TIMEOUT")


def test_a_failure_without_a_name_points_at_the_output() -> None:
    assert explain.failure("ssh: connect to host h9: No route\n") == \
        "the job failed before naming a process; see the output above"


def test_the_last_checkpoint_and_the_resume_command_follow(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "20260101-120000"
    (run / "checkpoints").mkdir(parents=True)
    for epoch in (1, 2, 10):
        (run / "checkpoints" / f"epoch-{epoch:03d}.keras").write_bytes(b"")
    log = f"[1,0]<stdout>:run directory {run}[1,0]<stdout>: (2 processes)\n" + MPI_KILLED
    newest = run / "checkpoints" / "epoch-010.keras"
    assert explain.failure(log) == ("rank 1 on h2 was killed by signal 9 (Killed); last "
                                    f"checkpoint {newest}; continue with: make train "
                                    f"RESUME={run}")
    log = f"run directory {run}\n" + GLOO_FAILED
    assert explain.failure(log, elastic=True).endswith(
        f"; continue with: make train ELASTIC=1 RESUME={run}")
    assert explain.resume_hint(f"run directory {tmp_path}\n") == ""  # no checkpoint: no hint


# --- Ctrl-C stops the job's whole process group ------------------------------------------------

LAUNCHER = """
import sys
from pathlib import Path
from preflight.launch.run import run_teed
rc, by = run_teed(sys.argv[1:], None, Path('.'), Path(sys.argv[0]).with_name('log'))
print('RESULT', rc, by, flush=True)
"""


def test_ctrl_c_stops_the_jobs_process_group(tmp_path: Path) -> None:
    # A job that starts a grandchild and ignores nothing: after Ctrl-C to the launcher, no
    # process of the job's group is left.
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    job = ["sh", "-c", "sleep 300 & echo child $!; echo started; wait"]
    launcher = subprocess.Popen([sys.executable, str(script), *job], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child = int(launcher.stdout.readline().split()[1])
        assert launcher.stdout.readline() == "started\n"
        group = os.getpgid(child)
        assert group != os.getpgid(launcher.pid)  # the job has a group of its own
        launcher.send_signal(signal.SIGINT)
        out, err = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert f"RESULT {128 + signal.SIGINT} {int(signal.SIGINT)}" in out, err
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and group_alive(group):
        time.sleep(0.1)
    assert not group_alive(group)
    assert (tmp_path / "log").read_text().startswith(f"child {child}\nstarted\n")


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_interface_runs_a_new_preflight_with_it_even_where_the_report_vouches(
        venv: Path, tmp_path: Path) -> None:
    """INTERFACE= asks for a network the report may not have checked: make train runs the
    preflight with --interface rather than trust the old report."""
    seen = tmp_path / "argv.txt"
    (venv / "bin" / "python").write_text(f'#!/bin/sh\necho "$@" > {seen}\nexit 2\n')
    hostfile, report = write_pair(tmp_path, "h1 slots=1\n")
    assert config(venv).interface is None
    cfg = config(venv, HOSTFILE=str(hostfile), REPORT=str(report), INTERFACE="eth2")
    assert cfg.interface == "eth2"
    with pytest.raises(PreflightFailed) as info:
        choose_hostfile(cfg)
    assert info.value.code == Exit.BAD_INPUT
    assert f"-m preflight --inventory {hostfile} --interface eth2" in seen.read_text()
