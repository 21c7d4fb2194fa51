"""Behaviour of the simulated cluster (scripts/simcluster): hosts, ssh, names and faults,
through its Python API and its command line.

All real: network namespaces, sshd, iptables. Needs root; see conftest.py.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from preflight.errors import UserError
from simcluster import UpOptions, read_state

pytestmark = pytest.mark.cluster

PY = sys.executable
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SCRIPT = SCRIPTS / "cluster.sh"  # a five-line shim that runs `python3 -m simcluster`
CONNECT = ("import socket, sys\n"
           "socket.create_connection((sys.argv[1], int(sys.argv[2])), "
           "timeout=float(sys.argv[3])).close()\n")
# Accepts and closes connections on a port until killed or 60 s have passed.
LISTEN = ("import socket, sys, time\n"
          "srv = socket.create_server(('0.0.0.0', int(sys.argv[1])))\n"
          "srv.settimeout(0.5)\n"
          "end = time.time() + 60\n"
          "while time.time() < end:\n"
          "    try:\n"
          "        conn, _ = srv.accept()\n"
          "        conn.close()\n"
          "    except socket.timeout:\n"
          "        pass\n")
HIGH_PORT = 45123


def tcp_connects(cluster, src: str, address: str, port: int, timeout: float = 1.5) -> bool:
    """Whether a TCP connection from host ``src`` to address:port is accepted."""
    return cluster.exec(src, PY, "-c", CONNECT, address, str(port), str(timeout)).returncode == 0


def eventually(check, tries: int = 30, delay: float = 0.1) -> bool:
    for _ in range(tries):
        if check():
            return True
        time.sleep(delay)
    return False


def ping_loss(cluster, src: str, address: str, *args: str) -> float:
    proc = cluster.exec(src, "ping", "-q", "-W", "1", *args, address)
    match = re.search(r"([\d.]+)% packet loss", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


# --- hosts, names and interfaces ----------------------------------------------------------------

def test_each_host_has_its_own_hostname(cluster):
    assert cluster.hosts == ["h1", "h2", "h3"]
    for host in cluster.hosts:
        assert cluster.exec(host, "hostname").stdout.strip() == host
    assert socket.gethostname() not in cluster.hosts  # the machine itself keeps its name


def test_each_host_has_its_own_address_and_no_default_route(cluster):
    assert cluster.addresses == {"h1": "10.231.0.11", "h2": "10.231.0.12", "h3": "10.231.0.13"}
    for host, address in cluster.addresses.items():
        addrs = cluster.exec(host, "ip", "-br", "addr", "show", "eth0").stdout
        assert f"{address}/24" in addrs
        assert cluster.exec(host, "ip", "route", "show", "default").stdout.strip() == ""


def test_nothing_is_added_to_the_root_namespace(cluster):
    root_addrs = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    root_links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    root_routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    assert "10.231." not in root_addrs and "10.232." not in root_addrs
    assert "10.231." not in root_routes
    assert "port-h" not in root_links and "br0" not in root_links
    assert "10.231." not in Path("/etc/hosts").read_text()


def test_names_resolve_per_host_through_etc_netns(cluster):
    for src in cluster.hosts:
        for dst, address in cluster.addresses.items():
            if (src, dst) == ("h3", "h3"):
                continue
            out = cluster.exec(src, "getent", "hosts", dst).stdout.split()
            assert out[:2] == [address, dst], (src, dst, out)
    # h3 has Debian's default line, so its own name resolves to loopback first: the classic cause
    # of MPI ranks advertising 127.0.1.1 to each other.
    assert cluster.exec("h3", "getent", "hosts", "h3").stdout.split()[0] == "127.0.1.1"
    assert "127.0.1.1" in Path(f"/etc/netns/{cluster.prefix}-h3/hosts").read_text()
    assert "127.0.1.1" not in Path(f"/etc/netns/{cluster.prefix}-h1/hosts").read_text()


def test_decoy_docker0_has_the_same_address_and_is_up_on_every_host(cluster):
    for host in cluster.hosts:
        addr = cluster.exec(host, "ip", "-br", "addr", "show", "docker0").stdout
        link = cluster.exec(host, "ip", "-br", "link", "show", "docker0").stdout
        assert "172.17.0.1/16" in addr, addr
        assert " UP " in link and "LOWER_UP" in link, link


def test_second_interface_exists_only_on_h2(cluster):
    eth1 = cluster.exec("h2", "ip", "-br", "addr", "show", "eth1").stdout
    assert "10.232.2.1/24" in eth1 and " UP " in eth1
    assert cluster.exec("h1", "ip", "link", "show", "eth1").returncode != 0
    assert not tcp_connects(cluster, "h1", "10.232.2.1", 22, timeout=0.5)  # it reaches nothing


# --- ssh ----------------------------------------------------------------------------------------

def test_ssh_between_hosts_works_with_the_key_in_batch_mode(cluster):
    for dst, address in cluster.addresses.items():
        for target in (dst, address):
            proc = cluster.ssh("h1", target, "hostname")
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == dst


def test_ssh_never_accepts_a_password(cluster):
    proc = cluster.exec("h1", "ssh", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
                        "-o", "PasswordAuthentication=yes",
                        "-o", "KbdInteractiveAuthentication=yes", "h2", "true")
    assert proc.returncode == 255
    assert "Permission denied (publickey)" in proc.stderr


def test_ssh_checks_host_keys(cluster):
    proc = cluster.exec("h1", "ssh", "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "StrictHostKeyChecking=yes", "h2", "true")
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_sshd_takes_many_sessions_at_once(cluster):
    # mpirun and the preflight open a session per rank or check at the same time.
    script = ("import subprocess\n"
              "cmd = ['ssh', '-o', 'BatchMode=yes', 'h2', 'true']\n"
              "procs = [subprocess.Popen(cmd) for _ in range(40)]\n"
              "print(sum(p.wait() != 0 for p in procs))\n")
    proc = cluster.exec("h1", PY, "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0", proc.stderr


# --- the command line ---------------------------------------------------------------------------

def test_exec_passes_argv_stdin_and_exit_status(cluster):
    out = cluster.exec("h1", "printf", "%s|", "a b", "$HOME", "*", ";true").stdout
    assert out == "a b|$HOME|*|;true|"
    assert cluster.exec("h2", "cat", input="through stdin\n").stdout == "through stdin\n"
    assert cluster.exec("h3", "sh", "-c", "exit 7").returncode == 7


def test_hosts_and_status_describe_the_cluster(cluster):
    assert cluster.run("hosts").stdout.split() == cluster.hosts
    status = cluster.run("status")
    assert status.returncode == 0
    for host, address in cluster.addresses.items():
        assert re.search(rf"^{host}\s.*{re.escape(address)}\s+up \(pid \d+\)", status.stdout, re.M)
    assert "faults: none" in status.stdout


def test_up_again_with_the_same_options_is_idempotent(cluster):
    pids = {h: (cluster.state_dir / h / "sshd.pid").read_text() for h in cluster.hosts}
    proc = cluster.run(*cluster.up_args)
    assert proc.returncode == 0, proc.stderr
    assert "already up" in proc.stdout
    assert {h: (cluster.state_dir / h / "sshd.pid").read_text() for h in cluster.hosts} == pids


def test_ssh_config_block_is_at_the_top_of_the_users_config(cluster):
    lines = (Path.home() / ".ssh" / "config").read_text().splitlines()
    begin = f"# >>> {cluster.prefix} cluster (scripts/cluster.sh) >>>"
    assert begin in lines and f"# <<< {cluster.prefix} cluster <<<" in lines
    assert f"Include {cluster.state_dir}/ssh_config" in lines
    assert lines.index(begin) == 0 or all(
        line.startswith("#") or line.startswith("Include") for line in lines[:lines.index(begin)])


BAD_INPUT = [
    (["frobnicate"], "unknown command"),
    (["up", "0"], "host count '0'"),
    (["up", "129"], "host count '129'"),
    (["up", "three"], "host count 'three'"),
    (["up", "3", "--decoy-bridge", "h4"], "unknown host 'h4'"),
    (["up", "3", "--mtu", "h1=big"], "not a valid MTU"),
    (["up", "3", "--data-net", "h4"], "--data-net: unknown host 'h4'"),
    (["up", "3", "--bogus"], "unknown option '--bogus'"),
    (["fault", "h9", "link", "on"], "unknown host 'h9'"),
    (["fault", "h1", "meteor", "on"], "unknown fault kind 'meteor'"),
    (["fault", "h1", "link", "sideways"], "must be 'on' or 'off'"),
    (["fault", "h1", "loss", "on", "150"], "loss percent '150'"),
    (["fault", "h1", "shadow", "on", "numpy"], "cannot shadow 'numpy'"),
    (["fault", "h1", "orted", "on", "sideways"], "orted: unknown mode 'sideways'"),
    (["fault", "h1", "slow-login", "on", "abc"], "slow-login 'abc' is not a whole number"),
    (["fault", "h1", "slow-login", "on", "0"], "slow-login '0' is not a whole number"),
    (["fault", "h1", "tmpdir", "on", "/tmp/a b"], "tmpdir '/tmp/a b' is not a path"),
    (["fault", "h1", "hostname", "on", "h1"], "is h1's own name"),
    (["fault", "h1", "hostname", "on", "no_such.name-"], "not a valid host name"),
    (["fault", "h2", "reverse-name", "on", "h2"], "already resolves to h2's address"),
    (["fault", "h1", "no-resolve", "on", "h9"], "no-resolve: unknown host 'h9'"),
    (["fault", "h1", "data-dead", "on"], "h1 has no data network interface eth2"),
    (["fault", "h2", "data-rate", "on", "100mbps"], "not mbps"),
    (["exec", "h9", "true"], "unknown host 'h9'"),
    (["exec", "h1"], "exec needs a host and a command"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_exits_2_with_a_one_line_message(cluster, args, message):
    proc = cluster.run(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("simcluster: error: ") and proc.stderr.count("\n") == 1, (
        proc.stderr)
    assert message in proc.stderr
    assert cluster.run("status").returncode == 0  # bad input never touches the running cluster


def cli(*args: str) -> subprocess.CompletedProcess:
    """`python3 -m simcluster ARGS` as a user runs it, without a cluster fixture."""
    return subprocess.run([PY, "-m", "simcluster", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(SCRIPTS)})


def test_without_root_it_says_how_to_run_it_and_exits_1():
    runuser, python = "/usr/sbin/runuser", "/usr/bin/python3"
    if not Path(runuser).exists() or not Path(python).exists() or os.geteuid() != 0:
        pytest.skip("needs root, runuser and the system python3 to run simcluster as nobody")
    # A copy where nobody may read it: the checkout may sit under a private directory (pytest's
    # tmp_path for a new project is 0700), and the message must come from simcluster, not
    # runuser. It runs with the system python3 and the standard library alone.
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o755)
        copy = Path(scratch)
        shutil.copytree(SCRIPTS / "simcluster", copy / "simcluster",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (copy / "preflight").mkdir()
        for name in ("__init__.py", "errors.py"):
            shutil.copy2(SCRIPTS / "preflight" / name, copy / "preflight" / name)
        shutil.copy2(SCRIPT, copy / "cluster.sh")
        subprocess.run(["chmod", "-R", "a+rX", scratch], check=True)
        as_nobody = [runuser, "-u", "nobody", "--", "env", f"PYTHONPATH={scratch}"]
        module = subprocess.run([*as_nobody, python, "-m", "simcluster", "up", "3"], cwd=scratch,
                                capture_output=True, text=True, timeout=30)
        shim = subprocess.run([*as_nobody, str(copy / "cluster.sh"), "up", "3"], cwd=scratch,
                              capture_output=True, text=True, timeout=30)
    for proc in (module, shim):
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip() == ("simcluster: error: needs root (network namespaces); "
                                       "run it as root, e.g.: sudo make cluster-up N=3")


def test_help_documents_every_command_and_fault_kind():
    proc = cli("--help")
    assert proc.returncode == 0
    for word in ("up [N]", "down", "status", "hosts", "exec HOST CMD", "fault HOST KIND on|off",
                 "--decoy-bridge", "--second-if", "--debian-hosts", "--mtu", "--ifname",
                 "link", "loss", "delay", "sshd", "firewall", "mtu", "debian-hosts",
                 "orted [MODE]", "missing", "hang", "tmpdir [PATH]", "slow-login [S]",
                 "shadow [MODULE]", "hostname [NAME]", "reverse-name [H]", "no-resolve [H]",
                 "--data-net", "data-rate [RATE]", "data-dead", "HVSIM_DIR", "HVSIM_PREFIX"):
        assert word in proc.stdout, word
    shim = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert shim.returncode == 0 and shim.stdout == proc.stdout  # the README's command still works


def test_no_command_prints_the_help_and_exits_2():
    proc = cli()
    assert proc.returncode == 2 and "fault HOST KIND on|off" in proc.stderr


# --- faults -------------------------------------------------------------------------------------

def test_fault_link_cuts_the_host_off_then_restores_it(cluster):
    h2 = cluster.addresses["h2"]
    assert tcp_connects(cluster, "h1", h2, 22)
    with cluster.fault("h1", "link"):
        assert "DOWN" in cluster.exec("h1", "ip", "-br", "link", "show", "eth0").stdout
        assert not tcp_connects(cluster, "h1", h2, 22)
        assert not tcp_connects(cluster, "h2", cluster.addresses["h1"], 22)
        assert "fault: h1 link on" in cluster.run("status").stdout
    assert eventually(lambda: tcp_connects(cluster, "h1", h2, 22))
    assert "fault: h1 link" not in cluster.run("status").stdout


def test_fault_sshd_refuses_ssh_then_accepts_it_again(cluster):
    with cluster.fault("h2", "sshd"):
        proc = cluster.ssh("h1", "h2", "true")
        assert proc.returncode == 255 and "refused" in proc.stderr, proc.stderr
        assert cluster.exec("h2", "hostname").stdout.strip() == "h2"  # the host itself is fine
        assert re.search(r"^h2\s.*\sdown\b", cluster.run("status").stdout, re.M)
    proc = cluster.ssh("h1", "h2", "hostname")
    assert proc.returncode == 0 and proc.stdout.strip() == "h2", proc.stderr


def test_fault_firewall_blocks_high_ports_but_not_ssh(cluster):
    h2 = cluster.addresses["h2"]
    listener = subprocess.Popen(cluster.exec_argv("h2", [PY, "-c", LISTEN, str(HIGH_PORT)]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert eventually(lambda: tcp_connects(cluster, "h1", h2, HIGH_PORT), tries=50)
        with cluster.fault("h2", "firewall"):
            assert not tcp_connects(cluster, "h1", h2, HIGH_PORT, timeout=1.0)
            assert cluster.ssh("h1", "h2", "true").returncode == 0  # ssh works: mpirun would hang
        assert tcp_connects(cluster, "h1", h2, HIGH_PORT)
    finally:
        listener.kill()
        listener.wait(timeout=10)


def test_fault_loss_drops_some_packets_then_none(cluster):
    h2 = cluster.addresses["h2"]
    with cluster.fault("h2", "loss", value=50):
        # At 50% the chance that all 30 requests get through is 1e-9.
        assert ping_loss(cluster, "h1", h2, "-c", "30", "-i", "0.05") > 0
    assert ping_loss(cluster, "h1", h2, "-c", "10", "-i", "0.05") == 0


def test_fault_mtu_breaks_full_size_frames_then_recovers(cluster):
    h3 = cluster.addresses["h3"]

    def df_ping(size: int) -> int:
        return cluster.exec("h1", "ping", "-c", "1", "-W", "1", "-M", "do", "-s", str(size),
                            h3).returncode

    assert df_ping(1472) == 0  # 1472 + 28 bytes of headers = 1500
    with cluster.fault("h3", "mtu", value=1400):
        assert "mtu 1400" in cluster.exec("h3", "ip", "link", "show", "eth0").stdout
        assert df_ping(1472) != 0  # dropped on arrival, silently, as a real mismatch does
        assert df_ping(1372) == 0
    assert "mtu 1500" in cluster.exec("h3", "ip", "link", "show", "eth0").stdout
    assert df_ping(1472) == 0


def test_fault_delay_uses_netem_or_says_the_kernel_lacks_it(cluster):
    h2 = cluster.addresses["h2"]
    fault = cluster.fault("h2", "delay", value=100, check=False)
    if fault.returncode == 3:
        assert str(fault.error) == ("this kernel has no netem qdisc (sch_netem); "
                                    "delay cannot be simulated")
        proc = cluster.run("fault", "h2", "delay", "on")
        assert proc.returncode == 3
        assert proc.stderr.strip() == ("simcluster: error: this kernel has no netem qdisc "
                                       "(sch_netem); delay cannot be simulated")
        assert "delay" not in cluster.run("status").stdout
        return
    with fault:
        assert fault.returncode == 0, fault.error
        out = cluster.exec("h1", "ping", "-c", "3", "-i", "0.2", h2).stdout
        rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        assert rtts and min(rtts) >= 90, out


def test_fault_debian_hosts_adds_then_removes_the_loopback_line(cluster):
    def own_address(via_ssh: bool) -> str:
        argv = ("getent", "hosts", "h1")
        proc = cluster.ssh("h2", "h1", *argv) if via_ssh else cluster.exec("h1", *argv)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()[0]

    assert own_address(via_ssh=False) == "10.231.0.11"
    with cluster.fault("h1", "debian-hosts"):
        # Both new processes and sessions of the already running sshd see the change.
        assert own_address(via_ssh=False) == "127.0.1.1"
        assert own_address(via_ssh=True) == "127.0.1.1"
        cluster.fault("h1", "debian-hosts", "on")
        hosts = Path(f"/etc/netns/{cluster.prefix}-h1/hosts").read_text()
        assert hosts.count("127.0.1.1") == 1
        assert hosts.index("127.0.1.1") < hosts.index("10.231.0.11")
        assert "fault: h1 debian-hosts on" in cluster.run("status").stdout
    assert own_address(via_ssh=False) == "10.231.0.11"
    assert own_address(via_ssh=True) == "10.231.0.11"


ORTE_FAILED = "ORTE was unable to reliably start one or more daemons"


def orted_runs(cluster, src: str, dst: str | None = None) -> bool:
    """Whether the real orted runs on `dst` over ssh from `src` (on `src` itself, through
    `exec`, when dst is None): its --help names the Open RTE daemon, /bin/false's does not."""
    argv = ("orted", "--help")
    proc = cluster.ssh(src, dst, *argv) if dst else cluster.exec(src, *argv)
    return "Open RTE" in proc.stdout + proc.stderr


def mpirun_hostnames(cluster, hosts: str) -> subprocess.CompletedProcess:
    return cluster.exec("h1", "mpirun", "--allow-run-as-root", "-H", hosts, "-np", "2",
                        "hostname", timeout=120)


def test_fault_orted_stops_mpirun_starting_its_daemon_on_that_host_only(cluster):
    if shutil.which("orted") is None or shutil.which("mpirun") is None:
        pytest.skip("needs Open MPI (orted, mpirun)")
    assert orted_runs(cluster, "h1", "h3")
    with cluster.fault("h3", "orted"):
        cluster.fault("h3", "orted", "on")  # idempotent
        assert not orted_runs(cluster, "h1", "h3")
        proc = cluster.ssh("h1", "h3", "hostname")
        assert proc.returncode == 0 and proc.stdout.strip() == "h3", proc.stderr  # ssh is fine
        # Only the sessions of h3's sshd see the mount: not h3 through exec, not h2, not here.
        assert orted_runs(cluster, "h3") and orted_runs(cluster, "h1", "h2")
        assert "orted" not in Path("/proc/self/mountinfo").read_text()
        proc = mpirun_hostnames(cluster, "h1,h3")
        assert proc.returncode != 0 and ORTE_FAILED in proc.stdout + proc.stderr, (
            proc.stdout + proc.stderr)
        assert "fault: h3 orted on" in cluster.run("status").stdout
    assert orted_runs(cluster, "h1", "h3")
    proc = mpirun_hostnames(cluster, "h1,h3")
    assert proc.returncode == 0 and sorted(proc.stdout.split()) == ["h1", "h3"], proc.stderr
    assert not (cluster.state_dir / "h3" / "blocked-program").exists()


def test_fault_orted_hang_answers_help_but_never_reports_back(cluster):
    if shutil.which("orted") is None:
        pytest.skip("needs Open MPI (orted)")
    hdir = cluster.state_dir / "h2"

    def some_arg() -> subprocess.CompletedProcess:
        # As mpirun starts it: any arguments but --help and --version.
        return cluster.ssh("h1", "h2", "timeout", "3", "orted", "--some-arg")

    with cluster.fault("h2", "orted", value="hang"):
        pid = (hdir / "sshd.pid").read_text()
        cluster.fault("h2", "orted", "on", "hang")  # idempotent: not even a restart
        assert (hdir / "sshd.pid").read_text() == pid
        # The preflight's probe runs `orted --help` and looks for "OpenRTE": it passes.
        proc = cluster.ssh("h1", "h2", "orted", "--help")
        said = proc.stdout + proc.stderr  # orted writes its help to stderr
        assert "OpenRTE" in said and "Usage: orted " in said, said
        assert some_arg().returncode == 124  # timeout's status: it did not exit by itself
        assert orted_runs(cluster, "h2") and orted_runs(cluster, "h1", "h3")  # only h2's sessions
        assert "fault: h2 orted on (hang)" in cluster.run("status").stdout
        cluster.fault("h2", "orted", "on", "missing")  # the mode changes while on
        assert not orted_runs(cluster, "h1", "h2")
        assert some_arg().returncode == 1  # /bin/false
        assert not (hdir / "orted-hang").exists() and not (hdir / "orted-real").exists()
        cluster.fault("h2", "orted", "on", "hang")
        assert orted_runs(cluster, "h1", "h2") and some_arg().returncode == 124
    assert orted_runs(cluster, "h1", "h2")
    assert some_arg().returncode not in (0, 124)  # the real orted refuses the option at once
    assert not [name for name in ("blocked-program", "orted-hang", "orted-real")
                if (hdir / name).exists()]


# Prints where a module comes from without importing it, and the version of its distribution.
FIND_MODULE = ("import importlib.metadata as m, importlib.util as u, sys\n"
               "spec = u.find_spec(sys.argv[1])\n"
               "try:\n"
               "    version = m.version(sys.argv[1])\n"
               "except m.PackageNotFoundError:\n"
               "    version = None\n"
               "print(spec.origin if spec else None, version)\n")
SHOW_VERSION = "import sys; mod = __import__(sys.argv[1]); print(mod.__version__, mod.__file__)"


def test_fault_shadow_puts_an_old_package_first_on_the_ssh_sessions_pythonpath(cluster):
    def found(host: str, module: str, via_ssh: bool = True) -> tuple[str, str]:
        argv = (PY, "-c", f"'{FIND_MODULE}'" if via_ssh else FIND_MODULE, module)
        proc = cluster.ssh("h1", host, *argv) if via_ssh else cluster.exec(host, *argv)
        assert proc.returncode == 0, proc.stderr
        origin, version = proc.stdout.split()
        return origin, version

    shadow = cluster.state_dir / "h2" / "shadow"
    real = found("h2", "horovod")
    with cluster.fault("h2", "shadow"):
        cluster.fault("h2", "shadow", "on")  # idempotent
        proc = cluster.ssh("h1", "h2", "python3", "-c", f"'{SHOW_VERSION}'", "horovod")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["0.19.0", f"{shadow}/horovod/__init__.py"]
        # The installed distribution is still what importlib.metadata reports: the blind spot.
        assert found("h2", "horovod") == (f"{shadow}/horovod/__init__.py", real[1])
        assert found("h3", "horovod") == real and found("h2", "horovod", via_ssh=False) == real
        # One module and nothing else (the import may have left a __pycache__).
        assert sorted(p.name for p in shadow.rglob("*") if "__pycache__" not in p.parts) == [
            "__init__.py", "horovod"]
        assert "fault: h2 shadow on (horovod)" in cluster.run("status").stdout
        cluster.fault("h2", "shadow", "on", "mpi4py")
        proc = cluster.ssh("h1", "h2", "python3", "-c", f"'{SHOW_VERSION}'", "mpi4py")
        assert proc.stdout.split() == ["3.0.3", f"{shadow}/mpi4py/__init__.py"], proc.stderr
        assert found("h2", "horovod") == real
    assert found("h2", "horovod") == real
    assert not found("h2", "mpi4py")[0].startswith(str(shadow))
    assert not shadow.exists()
    assert "PYTHONPATH" not in (cluster.state_dir / "h2" / "sshd_config").read_text()


def session_env(cluster, host: str) -> tuple[str, str]:
    """TMPDIR and PYTHONPATH as an ssh session on `host` has them ('' when unset)."""
    proc = cluster.ssh("h1", host, 'echo "$TMPDIR|$PYTHONPATH"')
    assert proc.returncode == 0, proc.stderr
    tmpdir, pythonpath = proc.stdout.rstrip("\n").split("|")
    return tmpdir, pythonpath


def test_fault_tmpdir_sets_tmpdir_in_ssh_sessions_beside_shadow(cluster):
    config = cluster.state_dir / "h2" / "sshd_config"
    shadow = str(cluster.state_dir / "h2" / "shadow")
    assert session_env(cluster, "h2") == ("", "")
    with cluster.fault("h2", "tmpdir"):
        pid = (cluster.state_dir / "h2" / "sshd.pid").read_text()
        cluster.fault("h2", "tmpdir", "on")  # idempotent: not even a restart
        assert (cluster.state_dir / "h2" / "sshd.pid").read_text() == pid
        assert session_env(cluster, "h2") == ("/proc/nonexistent/tmp", "")
        assert session_env(cluster, "h3") == ("", "")
        assert "fault: h2 tmpdir on (/proc/nonexistent/tmp)" in cluster.run("status").stdout
        if shutil.which("mpirun"):  # what the fault is for: the daemon cannot start there
            proc = mpirun_hostnames(cluster, "h1,h2")
            out = proc.stdout + proc.stderr
            assert proc.returncode != 0 and ORTE_FAILED in out and "/proc/nonexistent" in out, out
        # sshd honours only its first SetEnv line, so both faults share one; either goes alone.
        with cluster.fault("h2", "shadow"):
            assert session_env(cluster, "h2") == ("/proc/nonexistent/tmp", shadow)
            assert config.read_text().count("SetEnv") == 1
            cluster.fault("h2", "tmpdir", "on", "/var/tmp/elsewhere")
            assert session_env(cluster, "h2") == ("/var/tmp/elsewhere", shadow)
        assert session_env(cluster, "h2") == ("/var/tmp/elsewhere", "")
        with cluster.fault("h2", "shadow"):
            cluster.fault("h2", "tmpdir", "off")
            assert session_env(cluster, "h2") == ("", shadow)
            cluster.fault("h2", "tmpdir", "on")
    assert session_env(cluster, "h2") == ("", "")
    assert "SetEnv" not in config.read_text()
    assert "faults: none" in cluster.run("status").stdout


def timed_ssh(cluster, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """`ssh ARGS` from h1 in batch mode, and how long it took."""
    started = time.monotonic()
    proc = cluster.exec("h1", "ssh", "-o", "BatchMode=yes", *args)
    return time.monotonic() - started, proc


def test_fault_slow_login_makes_every_new_session_wait(cluster, tmp_path):
    wait_s = 2
    script = cluster.state_dir / "h2" / "slow-login"
    data = os.urandom(256 * 1024) + bytes(range(256))  # every byte value, more than a pipe holds
    # A shared connection, as the preflight and mpirun use: each new session on it waits too.
    mux = ("-o", "ControlMaster=auto", "-o", f"ControlPath={tmp_path}/cm-%h",
           "-o", "ControlPersist=30")
    elapsed, proc = timed_ssh(cluster, "h2", "true")
    assert proc.returncode == 0 and elapsed < wait_s, (elapsed, proc.stderr)
    with cluster.fault("h2", "slow-login", value=wait_s):
        cluster.fault("h2", "slow-login", "on", wait_s)  # idempotent
        elapsed, proc = timed_ssh(cluster, "h2", "true")
        assert proc.returncode == 0 and elapsed >= wait_s, (elapsed, proc.stderr)
        # The command runs as sshd would run it: same shell, stdin and stdout byte for byte,
        # its exit status.
        proc = cluster.ssh("h1", "h2", "cat", input=data, text=False)
        assert proc.returncode == 0 and proc.stdout == data, proc.stderr
        assert cluster.ssh("h1", "h2", "exit 7").returncode == 7
        for _ in range(2):
            elapsed, proc = timed_ssh(cluster, *mux, "h2", "hostname")
            assert proc.stdout.strip() == "h2" and elapsed >= wait_s, (elapsed, proc.stderr)
        cluster.exec("h1", "ssh", *mux, "-O", "exit", "h2")
        elapsed, proc = timed_ssh(cluster, "h3", "true")
        assert proc.returncode == 0 and elapsed < wait_s, (elapsed, proc.stderr)  # h2 only
        assert f"fault: h2 slow-login on ({wait_s})" in cluster.run("status").stdout
    elapsed, proc = timed_ssh(cluster, "h2", "true")
    assert proc.returncode == 0 and elapsed < wait_s, (elapsed, proc.stderr)
    assert not script.exists()
    assert "ForceCommand" not in (cluster.state_dir / "h2" / "sshd_config").read_text()


def test_fault_hostname_makes_two_hosts_answer_the_same_name(cluster):
    hosts_file = Path(f"/etc/netns/{cluster.prefix}-h2/hosts")
    before = hosts_file.read_text()
    with cluster.fault("h2", "hostname"):  # the next host's name: h3
        for src in ("h1", "h3"):
            assert cluster.ssh(src, "h2", "hostname").stdout.strip() == "h3"
        assert cluster.ssh("h1", "h3", "hostname").stdout.strip() == "h3"
        assert cluster.exec("h2", PY, "-c", "import socket; print(socket.gethostname())"
                            ).stdout.strip() == "h3"
        assert hosts_file.read_text() == before
        assert "fault: h2 hostname on (h3)" in cluster.run("status").stdout
        cluster.fault("h2", "hostname", "on", "node7.example")
        assert cluster.ssh("h1", "h2", "hostname").stdout.strip() == "node7.example"
    assert cluster.ssh("h1", "h2", "hostname").stdout.strip() == "h2"
    assert cluster.exec("h2", "hostname").stdout.strip() == "h2"
    assert cluster.fault("h3", "hostname").message.endswith("(h1)")  # wraps around
    cluster.fault("h3", "hostname", "off")
    assert cluster.exec("h3", "hostname").stdout.strip() == "h3"


def etc_hosts(cluster) -> dict[str, str]:
    return {h: Path(f"/etc/netns/{cluster.prefix}-{h}/hosts").read_text() for h in cluster.hosts}


def resolve(cluster, host: str, name: str, via_ssh_from: str | None = None) -> str | None:
    """The address `name` resolves to on `host`, None when it does not resolve."""
    argv = ("getent", "hosts", name)
    proc = (cluster.ssh(via_ssh_from, host, *argv) if via_ssh_from
            else cluster.exec(host, *argv))
    return proc.stdout.split()[0] if proc.returncode == 0 else None


def test_fault_reverse_name_resolves_the_hosts_own_name_to_another_host(cluster):
    before = etc_hosts(cluster)
    with cluster.fault("h2", "reverse-name"):  # the next host: h3
        cluster.fault("h2", "reverse-name", "on")  # idempotent
        assert resolve(cluster, "h2", "h2") == "10.231.0.13"
        assert resolve(cluster, "h2", "h2", via_ssh_from="h1") == "10.231.0.13"
        assert resolve(cluster, "h2", "h3") == "10.231.0.13"
        assert resolve(cluster, "h1", "h2") == "10.231.0.12"  # elsewhere it is right
        after = etc_hosts(cluster)
        assert {h: after[h] == before[h] for h in after} == {"h1": True, "h2": False, "h3": True}
        assert after["h2"].count("\th2\n") == 1
        assert read_state(cluster.settings).faults == {"h2 reverse-name": "h3"}
        cluster.fault("h2", "reverse-name", "on", "h1")
        assert resolve(cluster, "h2", "h2") == "10.231.0.11"
    assert resolve(cluster, "h2", "h2") == "10.231.0.12"
    assert etc_hosts(cluster) == before


def test_fault_no_resolve_takes_one_name_from_one_host(cluster):
    before = etc_hosts(cluster)
    with cluster.fault("h2", "no-resolve"):  # h1 by default
        assert resolve(cluster, "h2", "h1") is None
        assert resolve(cluster, "h2", "h1", via_ssh_from="h3") is None
        assert resolve(cluster, "h3", "h1") == "10.231.0.11"  # the others still resolve it
        assert resolve(cluster, "h2", "h3") == "10.231.0.13"
        assert "fault: h2 no-resolve on (h1)" in cluster.run("status").stdout
        # Another name: the first one comes back. With reverse-name too, either goes alone.
        cluster.fault("h2", "no-resolve", "on", "h3")
        assert resolve(cluster, "h2", "h1") == "10.231.0.11"
        assert resolve(cluster, "h2", "h3") is None
        with cluster.fault("h2", "reverse-name", value="h1"):
            assert resolve(cluster, "h2", "h2") == "10.231.0.11"
            assert resolve(cluster, "h2", "h3") is None
        assert resolve(cluster, "h2", "h2") == "10.231.0.12"
        assert resolve(cluster, "h2", "h3") is None
    assert etc_hosts(cluster) == before
    assert "faults: none" in cluster.run("status").stdout


def test_exec_takes_an_environment_and_working_directory(cluster, tmp_path):
    proc = cluster.exec("h2", "sh", "-c", 'echo "$HVSIM_TEST_VAR $(pwd)"',
                        env={"PATH": "/usr/bin:/bin", "HVSIM_TEST_VAR": "seen"}, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"seen {tmp_path}"


def test_faults_are_idempotent_and_listed_in_status(cluster):
    def firewall_rules() -> int:
        rules = cluster.exec("h2", "iptables", "-S", "INPUT").stdout
        return rules.count("hvsim-firewall")

    try:
        for _ in range(2):
            assert cluster.run("fault", "h2", "firewall", "on").returncode == 0
        cluster.fault("h2", "loss", "on", 10)
        cluster.fault("h2", "loss", "on", 20)
        assert firewall_rules() == 1
        rules = cluster.exec("h2", "iptables", "-S", "INPUT").stdout
        assert rules.count("hvsim-loss") == 1 and "0.2000" in rules
        status = cluster.run("status").stdout
        assert "fault: h2 firewall on" in status and "fault: h2 loss on (20)" in status
    finally:
        cluster.fault("h2", "firewall", "off")
        cluster.fault("h2", "loss", "off")
    cluster.fault("h2", "firewall", "off")
    assert firewall_rules() == 0
    assert "hvsim-loss" not in cluster.exec("h2", "iptables", "-S", "INPUT").stdout
    assert "faults: none" in cluster.run("status").stdout


def test_a_fault_in_a_with_block_is_turned_off_even_when_the_block_fails(cluster):
    with pytest.raises(RuntimeError, match="inside"), cluster.fault("h2", "firewall"):
        assert "fault: h2 firewall on" in cluster.run("status").stdout
        raise RuntimeError("inside")
    assert "faults: none" in cluster.run("status").stdout


def test_state_json_records_the_hosts_options_and_faults(cluster):
    state = read_state(cluster.settings)
    assert state is not None and state.options == UpOptions.parse(
        "3", decoy_bridge="all", second_if="h2", debian_hosts="h3")
    assert [(h.name, h.address, h.ifname, h.namespace) for h in state.hosts] == [
        (f"h{i}", f"10.231.0.1{i}", "eth0", f"{cluster.prefix}-h{i}") for i in (1, 2, 3)]
    with cluster.fault("h3", "mtu", value=1400):
        assert read_state(cluster.settings).faults == {"h3 mtu": "1400"}
    assert read_state(cluster.settings).faults == {}


def test_api_errors_are_user_errors_with_the_command_lines_exit_code(cluster):
    with pytest.raises(UserError) as bad:
        cluster.fault("h9", "link")
    assert bad.value.code == 2 and "unknown host 'h9'" in str(bad.value)
    with pytest.raises(UserError) as bad:
        cluster.exec("h1")  # no command: nsenter would start a shell, waiting on stdin
    assert bad.value.code == 2 and "exec needs a host and a command" in str(bad.value)
