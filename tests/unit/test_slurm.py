"""A Slurm allocation as the inventory: node lists expanded without a controller, slots from the
job's variables, explicit hosts winning, the report saying where the hosts came from, and the
--exclude= line for the next submission. No Slurm here: the environment is faked, and the only
host ever probed is localhost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from preflight import pipeline, report, slurm
from preflight.__main__ import main
from preflight.choice import InterfaceChoice
from preflight.errors import UserError
from preflight.inventory import InventoryError
from preflight.pipeline import Outcome
from preflight.result import HostReport, Report, failed, passed

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SLURM_VARIABLES = ("SLURM_JOB_NODELIST", "SLURM_JOB_ID", "SLURM_JOBID", "SLURM_TASKS_PER_NODE",
                   "SLURM_JOB_CPUS_PER_NODE", *slurm.GPU_VARIABLES)


def env(nodelist: str, **more: str) -> dict[str, str]:
    return {"SLURM_JOB_NODELIST": nodelist, "SLURM_JOB_ID": "123", **more}


def allocation(nodelist: str, **more: str):
    environ = env(nodelist, **more)
    return slurm.inventory(slurm.job(environ), environ)


# --- node lists ------------------------------------------------------------------------------

@pytest.mark.parametrize(("nodelist", "names"), [
    ("a[1-3,5],b7", ["a1", "a2", "a3", "a5", "b7"]),
    ("gpu[01-04]", ["gpu01", "gpu02", "gpu03", "gpu04"]),
    ("n[1-2]-ib,x", ["n1-ib", "n2-ib", "x"]),
    ("h1", ["h1"]),
    ("h1,h2", ["h1", "h2"]),
    ("node[009-011]", ["node009", "node010", "node011"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("sl[1-3]", ["sl1", "sl2", "sl3"]),
])
def test_node_lists_expand_as_scontrol_show_hostnames(nodelist, names):
    assert slurm.expand(nodelist) == names


@pytest.mark.parametrize("nodelist", ["h[1-", "h[3-1]", "h[a-b]"])
def test_a_broken_node_list_is_bad_input_naming_the_variable(nodelist):
    with pytest.raises(UserError, match=r"SLURM_JOB_NODELIST=.* is not a Slurm node list"):
        slurm.expand(nodelist)


def test_a_node_name_unsafe_for_ssh_is_rejected():
    with pytest.raises(InventoryError, match="SLURM_JOB_NODELIST node 2: bad host name"):
        slurm.expand("h1,-oProxyCommand=x")


def test_without_python_hostlist_an_allocation_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "hostlist", None)  # import hostlist raises ImportError
    with pytest.raises(UserError, match="python-hostlist is not installed; run make setup"):
        slurm.expand("h[1-2]")


def test_outside_an_allocation_there_is_no_job():
    assert slurm.job({}) is None
    assert slurm.job({"SLURM_JOB_NODELIST": " "}) is None
    assert slurm.job({"SLURM_JOB_NODELIST": "h1", "SLURM_JOBID": "9"}) == slurm.Job("9", "h1")


# --- slots -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "counts"), [
    ("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1(x2)", [1, 1]), ("1,2,3", [1, 2, 3]),
    ("2(x2),1(x2)", [2, 2, 1, 1]),
])
def test_per_node_counts_with_repeat_factors(text, counts):
    assert slurm.parse_counts(text, "SLURM_TASKS_PER_NODE") == counts


@pytest.mark.parametrize("text", ["", "2(x)", "x", "0", "2(x0)", "2(3)", "-1", "2,,1"])
def test_unreadable_counts_are_bad_input(text):
    with pytest.raises(UserError, match="SLURM_TASKS_PER_NODE=.*cannot read"):
        slurm.parse_counts(text, "SLURM_TASKS_PER_NODE")


def test_tasks_per_node_give_each_node_its_slots_in_node_list_order():
    got = allocation("a[1-3],b7", SLURM_TASKS_PER_NODE="2(x3),1", SLURM_JOB_CPUS_PER_NODE="8(x4)",
                     SLURM_GPUS_ON_NODE="4")
    assert [(h.name, h.slots) for h in got.hosts] == [("a1", 2), ("a2", 2), ("a3", 2), ("b7", 1)]
    assert got.origin.as_dict()["slots_from"] == "SLURM_TASKS_PER_NODE"


def test_without_tasks_a_job_with_gpus_gets_one_slot_per_gpu():
    for variable, value in (("SLURM_GPUS_ON_NODE", "4"), ("SLURM_JOB_GPUS", "0,1,2,3"),
                            ("SLURM_GPUS_PER_NODE", "a100:4")):
        got = allocation("gpu[01-02]", SLURM_JOB_CPUS_PER_NODE="64(x2)", **{variable: value})
        assert [h.slots for h in got.hosts] == [4, 4], variable
        assert got.origin.as_dict()["slots_from"] == variable


def test_without_tasks_or_gpus_the_jobs_cpus_per_node():
    got = allocation("n[1-3]", SLURM_JOB_CPUS_PER_NODE="8(x2),4", SLURM_GPUS_ON_NODE="0")
    assert [h.slots for h in got.hosts] == [8, 8, 4]


def test_without_any_count_the_host_decides_as_for_hosts():
    got = allocation("n[1-2]")
    assert [h.slots for h in got.hosts] == [None, None]
    assert got.origin.as_dict()["slots_from"] == ""


@pytest.mark.parametrize("variable", ["SLURM_TASKS_PER_NODE", "SLURM_JOB_CPUS_PER_NODE"])
def test_counts_for_another_number_of_nodes_are_an_error_naming_both_variables(variable):
    with pytest.raises(UserError) as err:
        allocation("h[1-3]", **{variable: "2(x2)"})
    text = str(err.value)
    assert f"{variable}='2(x2)' gives counts for 2 node(s)" in text
    assert "SLURM_JOB_NODELIST='h[1-3]' has 3" in text
    assert err.value.code == 2


def test_an_unreadable_gpu_count_is_bad_input():
    with pytest.raises(UserError, match="SLURM_GPUS_PER_NODE='a100:many'"):
        allocation("h1", SLURM_GPUS_PER_NODE="a100:many")


def test_the_inventory_names_the_job_and_its_nodes():
    got = allocation("h[1-3]", SLURM_TASKS_PER_NODE="1(x3)")
    assert got.source == "Slurm job 123 (h[1-3], 3 nodes)"
    assert report.inventory_line(got) == "inventory: Slurm job 123 (h[1-3], 3 nodes)"
    assert got.hosts[2].where == "SLURM_JOB_NODELIST node 3"
    assert got.origin.as_dict() == {"kind": "slurm", "job_id": "123", "nodelist": "h[1-3]",
                                    "nodes": 3, "slots_from": "SLURM_TASKS_PER_NODE"}


# --- precedence, through the command line ------------------------------------------------------

@pytest.fixture
def no_slurm(monkeypatch):
    """This process's environment without any Slurm variable (a developer may run the tests
    inside an allocation)."""
    for variable in SLURM_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.fixture
def checked(no_slurm):
    """pipeline.run replaced: records the inventory it is given, says every host is healthy."""
    seen: list = []

    def run(inventory, options, say=lambda _: None, phases=None):
        seen.append(inventory)
        hosts = tuple(HostReport(h.name, "127.0.0.1", h.slots or 1,
                                 (passed("ssh.login", "ok"),), "lo") for h in inventory.hosts)
        choice = InterfaceChoice("127.0.0.0/8", {h.host: "lo" for h in hosts})
        return Outcome(Report(hosts, "lo", "127.0.0.0/8"), choice, checks_run=("ssh.login",))

    no_slurm.setattr(pipeline, "run", run)
    return seen


def in_job(monkeypatch, nodelist: str, **more: str) -> None:
    for key, value in env(nodelist, **more).items():
        monkeypatch.setenv(key, value)


def outputs(tmp_path: Path) -> list[str]:
    return ["--hostfile", str(tmp_path / "hostfile"), "--report", str(tmp_path / "report.json")]


def provenance(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report.json").read_text())["provenance"]


def test_inside_an_allocation_with_no_hosts_given_its_nodes_are_the_inventory(
        tmp_path, checked, monkeypatch, capsys):
    in_job(monkeypatch, "localhost", SLURM_TASKS_PER_NODE="2")
    assert main(outputs(tmp_path)) == 0
    (inventory,) = checked
    assert [(h.name, h.slots) for h in inventory.hosts] == [("localhost", 2)]
    assert "preflight: inventory: Slurm job 123 (localhost, 1 node)\n" in capsys.readouterr().err
    prov = provenance(tmp_path)
    assert prov["inventory"] == "Slurm job 123 (localhost, 1 node)"
    assert prov["inventory_source"] == {"kind": "slurm", "job_id": "123",
                                        "nodelist": "localhost", "nodes": 1,
                                        "slots_from": "SLURM_TASKS_PER_NODE"}
    assert (tmp_path / "hostfile").read_text() == "localhost slots=2\n"


def test_explicit_hosts_win_over_the_allocation_and_a_note_says_so(tmp_path, checked, monkeypatch,
                                                                  capsys):
    # A broken count list does not stop hosts given explicitly: it is never read.
    in_job(monkeypatch, "h[1-3]", SLURM_TASKS_PER_NODE="garbled")
    assert main(["--hosts", "localhost:1", *outputs(tmp_path)]) == 0
    assert [h.name for h in checked[0].hosts] == ["localhost"]
    err = capsys.readouterr().err
    assert "preflight: inventory: --hosts (1 host)\n" in err
    assert ("preflight: note: checking --hosts, not the nodes of Slurm job 123 (h[1-3]): hosts "
            "given explicitly win; inside the job mpirun starts ranks on its nodes only\n") in err
    assert err.count("note:") == 1
    assert provenance(tmp_path)["inventory_source"] == {
        "kind": "hosts", "slurm_job_ignored": "123", "slurm_nodelist_ignored": "h[1-3]"}


def test_an_explicit_inventory_file_wins_too(tmp_path, checked, monkeypatch, capsys):
    inventory = tmp_path / "hosts.txt"
    inventory.write_text("localhost slots=1\n")
    in_job(monkeypatch, "h[1-3]")
    assert main(["--inventory", str(inventory), "--quiet", *outputs(tmp_path)]) == 0
    assert checked[0].names == ["localhost"]
    assert "note:" not in capsys.readouterr().err  # --quiet: the report still records it
    assert provenance(tmp_path)["inventory_source"] == {
        "kind": "inventory", "path": str(inventory), "slurm_job_ignored": "123",
        "slurm_nodelist_ignored": "h[1-3]"}


def test_outside_an_allocation_the_default_stays_this_machine(tmp_path, checked, capsys):
    assert main(outputs(tmp_path)) == 0
    assert checked[0].names == ["localhost"]
    assert ("preflight: inventory: this machine (localhost; no hosts given, no Slurm "
            "allocation)\n") in capsys.readouterr().err
    assert provenance(tmp_path)["inventory_source"] == {"kind": "this machine"}


def test_a_mismatch_exits_2_and_writes_nothing(tmp_path, checked, monkeypatch, capsys):
    in_job(monkeypatch, "h[1-3]", SLURM_TASKS_PER_NODE="1(x2)")
    assert main(outputs(tmp_path)) == 2
    assert not checked and list(tmp_path.iterdir()) == []
    assert "SLURM_TASKS_PER_NODE='1(x2)'" in capsys.readouterr().err


def test_the_real_preflight_in_a_fake_allocation_of_localhost(tmp_path):
    """End to end in a subprocess: the probe runs on this machine only (localhost is local,
    no ssh); --no-mpi keeps it short."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environ.update(env("localhost", SLURM_TASKS_PER_NODE="1"), PYTHONPATH=str(SCRIPTS))
    proc = subprocess.run([sys.executable, "-m", "preflight", "--no-mpi", *outputs(tmp_path)],
                          capture_output=True, text=True, env=environ, timeout=120, check=False)
    assert "preflight: inventory: Slurm job 123 (localhost, 1 node)" in proc.stderr
    doc = json.loads((tmp_path / "report.json").read_text())
    assert proc.returncode == (0 if doc["ok"] else 1), proc.stderr
    assert doc["provenance"]["inventory_source"]["kind"] == "slurm"
    assert [(h["host"], h["slots"]) for h in doc["hosts"]] == [("localhost", 1)]


# --- the next submission ---------------------------------------------------------------------

def test_failed_hosts_become_one_compressed_exclude_option():
    assert slurm.exclude_value(["gpu04", "gpu01", "gpu02", "b7"]) == "b7,gpu[01-02,04]"
    assert slurm.exclude_option(["h3"]) == "--exclude=h3"
    assert slurm.exclude_option(["node010", "node009"]) == "--exclude=node[009-010]"
    assert slurm.exclude_option([]) is None


def test_exclude_command_reads_the_failed_hosts_from_the_report(tmp_path, capsys):
    hosts = (HostReport("h1", None, 1, (passed("ssh.login", "ok"),)),
             HostReport("h2", None, 1, (failed("mesh.tcp", "closed", "open the ports"),)),
             HostReport("h3", None, 1, (failed("ssh.login", "refused", "start sshd"),)))
    path = tmp_path / "preflight.json"
    path.write_text(json.dumps(Report(hosts, "eth0").as_dict()))
    assert slurm.main(["exclude", str(path)]) == 0
    assert capsys.readouterr().out == "--exclude=h[2-3]\n"
    path.write_text(json.dumps(Report(hosts[:1], "eth0").as_dict()))
    assert slurm.main(["exclude", str(path)]) == 0
    assert capsys.readouterr().out == ""
    assert slurm.main(["exclude", str(tmp_path / "missing.json")]) == 2
    assert "run make preflight first" in capsys.readouterr().err


def test_an_allocation_of_a_thousand_nodes_is_an_inventory_of_a_thousand_hosts():
    environ = {"SLURM_JOB_NODELIST": "gpu[0001-0600],cpu[1-400]", "SLURM_JOBID": "12",
               "SLURM_TASKS_PER_NODE": "4(x600),1(x400)"}
    found = slurm.inventory(slurm.job(environ), environ)
    assert len(found.names) == 1000
    assert found.names[0] == "gpu0001" and found.names[-1] == "cpu400"
    assert [h.slots for h in found.hosts].count(4) == 600
