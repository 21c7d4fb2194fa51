"""The fact-based checks: ssh, resolve, software, resources, clock, on recorded probe output."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from preflight import checks
from preflight.checks import clock, resolve, resources, software
from preflight.checks import ssh as ssh_checks
from preflight.checks.context import Context
from preflight.choice import InterfaceChoice
from preflight.facts import Facts, HostProbe
from preflight.proc import Ran
from preflight.result import Status

FACTS = Path(__file__).with_name("facts")
HOSTS = ["h1", "h2", "h3"]


def raw(host: str) -> dict:
    return copy.deepcopy(json.loads((FACTS / f"{host}.json").read_text()))


def facts(host: str, **changes) -> Facts:
    d = raw(host)
    d.update(changes)
    return Facts.from_dict(d)


def cluster(**per_host) -> dict[str, Facts]:
    return {h: per_host.get(h) or facts(h) for h in HOSTS}


def ssh_result(rc: int, stderr: str = "", timed_out: bool = False) -> Ran:
    return Ran(("ssh", "h2"), rc, "", stderr, 0.2, "timeout" if timed_out else None)


# --- ssh ---------------------------------------------------------------------------------------

def test_local_host_needs_no_ssh():
    result = ssh_checks.check_login("localhost", None, local=True, timeout_s=10)
    assert (result.status, result.detail) == (Status.PASS, "local, no ssh needed")


@pytest.mark.parametrize(("stderr", "detail", "remedy"), [
    ("root@h2: Permission denied (publickey,password).", "key login refused",
     "ssh-copy-id h2"),
    ("ssh: connect to host h2 port 22: Connection refused", "sshd not running",
     "start sshd on h2"),
    ("ssh: connect to host h2 port 22: Connection timed out", "timed out", "ping h2"),
    ("ssh: connect to host h2 port 22: No route to host", "no route", "link state"),
    ("ssh: Could not resolve hostname h2: Name or service not known", "cannot resolve",
     "/etc/hosts"),
    ("Host key verification failed.", "host key", "ssh-keyscan h2"),
    ("kex_exchange_identification: read: Connection reset by peer", "ssh failed", "ssh -v h2"),
])
def test_ssh_failure_says_why_and_what_to_do(stderr, detail, remedy):
    result = ssh_checks.check_login("h2", ssh_result(255, stderr), local=False, timeout_s=10)
    assert result.status is Status.FAIL
    assert detail in result.detail
    assert remedy in result.remedy


def test_host_key_remedy_never_turns_checking_off():
    result = ssh_checks.check_login("h2", ssh_result(255, "Host key verification failed."),
                                    local=False, timeout_s=10)
    assert "StrictHostKeyChecking=no" not in result.remedy
    assert "do not turn host-key checking off" in result.remedy


def test_ssh_that_does_not_answer_in_time_fails_as_unreachable():
    result = ssh_checks.check_login("h2", ssh_result(-1, timed_out=True), local=False,
                                    timeout_s=4)
    assert result.status is Status.FAIL
    assert "no answer from h2 within 4 s" in result.detail


def test_ssh_that_works_passes_and_the_probe_that_fails_is_its_own_check():
    bad = ssh_result(127, "sh: 1: exec: python3: not found")
    assert ssh_checks.check_login("h2", bad, local=False, timeout_s=10).status is Status.PASS
    probe = ssh_checks.check_probe("h2", bad, None)
    assert probe.status is Status.FAIL
    assert "install python3 on h2" in probe.remedy


def test_probe_is_skipped_when_ssh_failed():
    probe = ssh_checks.check_probe("h2", ssh_result(255, "Permission denied"), None)
    assert probe.status is Status.SKIP


# --- resolve -----------------------------------------------------------------------------------

def test_debian_127_0_1_1_line_fails_loopback_in_a_multi_host_job():
    result = resolve.check_loopback("h3", facts("h3"), multi_host=True)
    assert result.status is Status.FAIL
    assert "127.0.1.1" in result.detail
    assert result.remedy == ("remove the '127.0.1.1 h3' line from /etc/hosts on h3 or map h3 to "
                             "its real address")


def test_loopback_is_fine_for_one_host_alone():
    result = resolve.check_loopback("h3", facts("h3"), multi_host=False)
    assert result.status is Status.PASS


def test_localhost_in_a_multi_host_inventory_fails_loopback():
    result = resolve.check_loopback("localhost", facts("h1"), multi_host=True)
    assert result.status is Status.FAIL
    assert "instead of localhost" in result.remedy


def test_real_address_passes_loopback():
    assert resolve.check_loopback("h1", facts("h1"), multi_host=True).status is Status.PASS


def test_own_loopback_view_does_not_fail_the_name_check():
    result = resolve.check_name("h3", cluster())
    assert result.status is Status.PASS
    assert "10.231.0.13" in result.detail


def unresolvable(observer: str, *names: str) -> Facts:
    d = raw(observer)
    for name in names:
        d["resolved"][name] = {"addresses": [], "error": "gaierror: Name or service not known"}
    return Facts.from_dict(d)


def test_a_name_one_host_of_three_cannot_resolve_is_that_hosts_fault_not_the_names():
    facts_now = cluster(h2=unresolvable("h2", "h1"))
    name = resolve.check_name("h1", facts_now)
    assert name.status is Status.PASS
    assert "h2 cannot resolve it" in name.detail
    peers = resolve.check_peers("h2", HOSTS, facts_now)
    assert peers.status is Status.FAIL
    assert peers.detail.startswith("h2 cannot resolve h1 (gaierror")
    assert "/etc/hosts there" in peers.remedy and "h2" in peers.remedy
    assert resolve.check_peers("h3", HOSTS, facts_now).status is Status.PASS


def test_a_name_most_hosts_cannot_resolve_is_the_names_fault():
    facts_now = cluster(h2=unresolvable("h2", "h1"), h3=unresolvable("h3", "h1"))
    result = resolve.check_name("h1", facts_now)
    assert result.status is Status.FAIL
    assert result.detail == "h1 does not resolve on h2, h3"
    assert "to /etc/hosts (or DNS) on h2, h3" in result.remedy
    assert resolve.check_peers("h2", HOSTS, facts_now).status is Status.PASS


def test_with_two_hosts_the_name_that_the_other_cannot_resolve_is_at_fault():
    """The owner's own view does not vote: a lone peer that cannot resolve it outvotes it."""
    facts_now = {"h1": unresolvable("h1", "h2"), "h2": facts("h2")}
    assert resolve.check_name("h2", facts_now).status is Status.FAIL
    assert resolve.check_peers("h1", ["h1", "h2"], facts_now).status is Status.PASS


def test_two_hosts_with_one_hostname_warn_for_mpi_and_fail_for_gloo():
    twins = cluster(h3=facts("h3", hostname="h2"))
    warn = resolve.check_identity("h3", twins, strict=False)
    assert warn.status is Status.WARN
    assert warn.detail.startswith("h3 and h2 report the same hostname h2")
    assert "hostnamectl set-hostname" in warn.remedy
    assert resolve.check_identity("h2", twins, strict=True).status is Status.FAIL
    assert resolve.check_identity("h1", twins, strict=True).status is Status.PASS


def test_a_hostname_that_resolves_to_another_hosts_address_is_named():
    d = raw("h3")
    d["resolved"][d["hostname"]] = {"addresses": ["10.231.0.12"], "error": None}
    result = resolve.check_identity("h3", cluster(h3=Facts.from_dict(d)), strict=True)
    assert result.status is Status.FAIL
    assert "resolves on h3 to 10.231.0.12, the address of h2" in result.detail
    assert "/etc/hosts on h3" in result.remedy


def test_name_resolving_differently_on_two_hosts_warns():
    d = raw("h3")
    d["resolved"]["h2"] = {"addresses": ["10.231.0.99"], "error": None}
    result = resolve.check_name("h2", cluster(h3=Facts.from_dict(d)))
    assert result.status is Status.WARN
    assert "h3: 10.231.0.99" in result.detail


# --- software ----------------------------------------------------------------------------------

def test_same_software_everywhere_passes():
    result = software.check_versions("h2", facts("h2"), facts("h1"), "h1")
    assert result.status is Status.PASS
    assert "Horovod 0.28.1" in result.detail


def test_version_mismatch_fails_with_make_setup_on_that_host():
    d = raw("h2")
    d["packages"]["horovod"] = "0.28.0"
    d["python"] = "3.10.12"
    result = software.check_versions("h2", Facts.from_dict(d), facts("h1"), "h1")
    assert result.status is Status.FAIL
    assert "Horovod 0.28.0 (launcher h1: 0.28.1)" in result.detail
    assert "Python 3.10 (launcher h1: 3.11)" in result.detail
    assert result.remedy == "run make setup on h2"


def test_patch_level_of_python_does_not_matter():
    result = software.check_versions("h2", facts("h2", python="3.11.2"), facts("h1"), "h1")
    assert result.status is Status.PASS


def test_different_mpi_library_fails():
    result = software.check_versions("h2", facts("h2", mpirun="mpirun (Open MPI) 4.0.3"),
                                     facts("h1"), "h1")
    assert result.status is Status.FAIL
    assert "MPI mpirun (Open MPI) 4.0.3" in result.detail


def test_horovod_built_without_gloo_fails_with_a_rebuild_remedy():
    d = raw("h2")
    d["horovod_build"]["Gloo"] = False
    result = software.check_versions("h2", Facts.from_dict(d), facts("h1"), "h1")
    assert result.status is Status.FAIL
    assert "built without Gloo" in result.detail
    assert result.remedy == "rebuild Horovod: make setup FORCE=1 on h2"


def test_missing_horovod_fails():
    d = raw("h1")
    d["packages"]["horovod"] = None
    result = software.check_versions("h1", Facts.from_dict(d), Facts.from_dict(d), "h1")
    assert result.status is Status.FAIL
    assert result.remedy == "run make setup on h1"


def with_modules(host: str, **overrides) -> dict:
    """Facts as the current probe reports them: where each module is imported from."""
    d = raw(host)
    site = f"{d['prefix']}/lib/python3.11/site-packages"
    versions = {"tensorflow": "2.15.1", "horovod": "0.28.1", "mpi4py": "4.0.3"}
    d["modules"] = {name: {"path": f"{site}/{name}", "entry": site, "from_pythonpath": False,
                           "version": version} for name, version in versions.items()}
    d["modules"]["tf_keras"] = None
    d["modules"].update(overrides)
    d["mpi_daemon"] = {"name": "orted", "path": "/usr/bin/orted", "runs": True, "error": None}
    return d


def test_horovod_shadowed_by_pythonpath_fails_naming_the_path():
    shadow = {"path": "/opt/old/horovod", "entry": "/opt/old", "from_pythonpath": True,
              "version": "0.19.0"}
    d = with_modules("h2", horovod=shadow)
    d["pythonpath"] = "/opt/old"
    result = software.check_versions("h2", Facts.from_dict(d), Facts.from_dict(with_modules("h1")),
                                     "h1")
    assert result.status is Status.FAIL
    assert "import horovod loads 0.19.0 from /opt/old/horovod" in result.detail
    assert "instead of the 0.28.1 installed" in result.detail
    assert "take /opt/old out of PYTHONPATH" in result.remedy


def test_the_imported_version_counts_not_the_installed_metadata():
    """A copy outside the venv that Python finds first is what the job runs."""
    elsewhere = {"path": "/usr/lib/python3/dist-packages/mpi4py",
                 "entry": "/usr/lib/python3/dist-packages", "from_pythonpath": False,
                 "version": "3.1.4"}
    d = with_modules("h2", mpi4py=elsewhere)
    result = software.check_versions("h2", Facts.from_dict(d), Facts.from_dict(with_modules("h1")),
                                     "h1")
    assert result.status is Status.FAIL
    assert ("mpi4py 3.1.4 (launcher h1: 4.0.3) from /usr/lib/python3/dist-packages/mpi4py"
            in result.detail)


def test_the_same_imports_everywhere_pass():
    result = software.check_versions("h2", Facts.from_dict(with_modules("h2")),
                                     Facts.from_dict(with_modules("h1")), "h1")
    assert result.status is Status.PASS


def test_a_launcher_with_other_software_than_every_other_host_is_the_one_that_fails():
    old = raw("h1")
    old["packages"]["horovod"] = "0.27.0"
    hosts = {"h1": Facts.from_dict(old), "h2": facts("h2"), "h3": facts("h3")}
    ctx = context(hosts)
    results = {h: software.check(h, ctx)[0] for h in hosts}
    assert results["h1"].status is Status.FAIL
    assert results["h1"].detail.startswith("differs from most hosts: Horovod 0.27.0 (most "
                                           "hosts, e.g. h2: 0.28.1)")
    assert results["h2"].status is Status.PASS and results["h3"].status is Status.PASS


def test_with_two_hosts_the_launcher_is_the_reference():
    old = raw("h2")
    old["packages"]["horovod"] = "0.27.0"
    ctx = context({"h1": facts("h1"), "h2": Facts.from_dict(old)})
    assert software.check("h1", ctx)[0].status is Status.PASS
    assert "(launcher h1: 0.28.1)" in software.check("h2", ctx)[0].detail


def test_an_orted_that_does_not_start_fails_for_mpi_and_warns_for_gloo():
    d = with_modules("h2")
    d["mpi_daemon"] = {"name": "orted", "path": "/usr/bin/orted", "runs": False,
                       "error": "exit 1"}
    f = Facts.from_dict(d)
    fail = software.check_orted("h2", f, local=False, mpi=True)
    assert fail.status is Status.FAIL
    assert fail.detail.startswith("/usr/bin/orted on h2 does not start as Open MPI's daemon "
                                  "over non-interactive ssh (orted --help said: exit 1)")
    assert "ssh h2 orted --help" in fail.remedy
    assert software.check_orted("h2", f, local=False, mpi=False).status is Status.WARN
    assert software.check_orted("h2", f, local=True, mpi=True).status is Status.PASS


def session(path: str = "/tmp", source: str = "default", writable: bool = True,
            free: int | None = 50 << 30, error: str | None = None) -> dict:
    return {"path": path, "source": source, "writable": writable, "free": free, "error": error}


def test_a_session_directory_that_cannot_be_made_fails_naming_tmpdir():
    f = facts("h2", session_dir=session("/nonexistent/tmp", "TMPDIR", False, None,
                                        "FileNotFoundError: No such file or directory"))
    result = software.check_session_dir("h2", f)
    assert result.status is Status.FAIL
    assert result.detail == ("Open MPI's session directory cannot be made in /nonexistent/tmp "
                             "(from $TMPDIR) on h2: FileNotFoundError: No such file or "
                             "directory; its daemon would start, then fail")
    assert "TMPDIR" in result.remedy


def test_a_full_session_directory_fails_and_a_roomy_one_passes():
    assert software.check_session_dir("h2", facts("h2", session_dir=session(
        free=1 << 20))).status is Status.FAIL
    passed_check = software.check_session_dir("h2", facts("h2", session_dir=session()))
    assert passed_check.status is Status.PASS and "50 GiB free" in passed_check.detail
    assert software.check_session_dir("h2", facts("h2")).status is Status.SKIP  # older probe


def test_a_shared_library_the_daemon_cannot_find_fails_with_its_name():
    f = facts("h2", missing_libraries={"/usr/bin/orted": ["libopen-rte.so.40"]})
    result = software.check_libraries("h2", f)
    assert result.status is Status.FAIL
    assert "/usr/bin/orted needs libopen-rte.so.40" in result.detail
    assert "LD_LIBRARY_PATH" in result.remedy
    assert software.check_libraries("h2", facts("h2", missing_libraries={})).status is \
        Status.PASS


def test_unknown_horovod_build_warns():
    result = software.check_versions("h1", facts("h1", horovod_build=None),
                                     facts("h1", horovod_build=None), "h1")
    assert result.status is Status.WARN


# --- resources ---------------------------------------------------------------------------------

def test_more_slots_than_logical_cores_warns_oversubscribed():
    result = resources.check_slots("h1", 8, facts("h1"), from_inventory=True)
    assert result.status is Status.WARN
    assert "8 slots on 4 logical cores" in result.detail
    assert result.remedy == "lower slots for h1 to 4 or fewer in the inventory"


def test_default_slots_are_physical_cores_or_gpus():
    assert facts("h1").default_slots == 2
    assert facts("h1", gpus=8).default_slots == 8
    result = resources.check_slots("h1", 2, facts("h1"), from_inventory=False)
    assert result.status is Status.PASS
    assert "physical cores" in result.detail


def test_small_dev_shm_warns():
    result = resources.check_shm("h1", facts("h1", shm_total=64 * 1024**2))
    assert result.status is Status.WARN
    assert "/dev/shm" in result.remedy


def test_low_memory_per_slot_warns():
    result = resources.check_memory("h1", 4, facts("h1", memory_available=2 * 1024**3))
    assert result.status is Status.WARN


def test_almost_full_disk_fails_and_nearly_full_disk_warns():
    assert resources.check_disk("h1", facts("h1", disk_free=50 * 1024**2)).status is Status.FAIL
    assert resources.check_disk("h1", facts("h1", disk_free=1024**3)).status is Status.WARN
    assert resources.check_disk("h1", facts("h1")).status is Status.PASS


def test_missing_venv_or_script_fails_with_clone_remedy():
    result = resources.check_paths("h2", facts("h2", script_exists=False))
    assert result.status is Status.FAIL
    assert "/work/main/template/train.py" in result.detail
    assert result.remedy == ("clone the project to the same path on h2 and run make setup "
                             "there")


# --- clock -------------------------------------------------------------------------------------

def test_skew_within_the_round_trip_passes():
    assert clock.check_skew("h2", 100.4, 100.0, 100.6).status is Status.PASS


def test_skew_over_a_second_warns_and_over_a_minute_fails():
    warn = clock.check_skew("h2", 105.0, 100.0, 100.2)
    assert warn.status is Status.WARN
    assert warn.remedy == "enable time sync (chrony or systemd-timesyncd) on h2"
    assert clock.check_skew("h2", 30.0, 100.0, 100.2).status is Status.FAIL


def test_skew_detail_gives_the_uncertainty():
    assert clock.check_skew("h2", 101.0, 100.0, 100.2).detail == (
        "+0.900 s (± 0.100 s) against the launcher")


def context(facts_by_host: dict[str, Facts], launcher: str = "h1") -> Context:
    """Every host probed at its own facts' time, as if the launcher's clock read 1000.0."""
    probes = {h: HostProbe(h, h == launcher, None, f, None, 1000.0, 1000.2)
              for h, f in facts_by_host.items()}
    return Context(probes, facts_by_host, InterfaceChoice(None), {h: 1 for h in facts_by_host},
                   frozenset(), launcher, 10.0)


def test_a_launcher_whose_clock_is_off_from_all_others_is_the_one_that_fails():
    at = {"h1": 1000.1, "h2": 1120.1, "h3": 1120.2, "h4": 1120.0}
    ctx = context({h: facts(h if h != "h4" else "h3", time=t) for h, t in at.items()})
    results = {h: clock.check(h, ctx)[0] for h in at}
    assert results["h1"].status is Status.FAIL
    assert "against most hosts (the launcher is -119.950 s off them)" in results["h1"].detail
    assert {results[h].status for h in ("h2", "h3", "h4")} == {Status.PASS}


def test_one_host_off_from_the_launcher_and_the_rest_is_the_one_named():
    at = {"h1": 1000.1, "h2": 1000.1, "h3": 1005.1}
    ctx = context({h: facts(h, time=t) for h, t in at.items()})
    assert [clock.check(h, ctx)[0].status for h in at] == [Status.PASS, Status.PASS,
                                                          Status.WARN]
    assert clock.check("h3", ctx)[0].detail.endswith("against the launcher")


# --- ids ---------------------------------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("mod", checks.FAMILIES, ids=lambda m: m.FAMILY)
def test_every_check_id_a_family_emits_is_declared_and_documented(mod):
    source = Path(mod.__file__).read_text()
    emitted = set(re.findall(rf'"({mod.FAMILY}\.[a-z_]+)"', source))
    assert emitted, mod.FAMILY
    assert emitted == set(mod.IDS), f"{mod.FAMILY}: emits {emitted}, declares {mod.IDS}"
    readme = README.read_text()
    for check_id in mod.IDS:
        assert f"`{check_id}`" in mod.__doc__, f"{check_id} is not documented in {mod.__name__}"
        assert f"`{check_id}`" in readme, f"{check_id} is not in the README's table"


def test_no_other_module_spells_out_a_check_id():
    """Ids live in their family's module: elsewhere they are read from it."""
    package = Path(checks.__file__).resolve().parents[1]
    pattern = re.compile(r'"(' + "|".join(re.escape(i) for i in checks.all_ids()) + r')"')
    family_files = {Path(m.__file__).resolve() for m in checks.FAMILIES}
    spelled = [f"{path.relative_to(package)}: {m.group(1)}"
               for path in package.rglob("*.py") if path.resolve() not in family_files
               for m in pattern.finditer(path.read_text())]
    assert not spelled, spelled
