"""Hosts and slots from --hosts and inventory files; every mistake names its line and the fix."""

from __future__ import annotations

import pytest

from preflight import inventory as inv
from preflight.__main__ import main


def no_resolver(name: str) -> set[str]:
    return set()


def fake_resolver(table: dict[str, set[str]]):
    return lambda name: table.get(name, set())


def test_hostfile_with_comments_blank_lines_and_missing_slots_parses():
    text = "# cluster\n\nh1 slots=2\nh2   slots=4  # big one\nh3\n"
    got = inv.parse_hostfile(text, "hosts.txt")
    assert [(h.name, h.slots) for h in got.hosts] == [("h1", 2), ("h2", 4), ("h3", None)]
    assert got.source == "hosts.txt"


@pytest.mark.parametrize(("text", "line", "words"), [
    ("h1 slots=2\nh2 slots\n", 2, "only 'slots=N'"),
    ("h1 slots=abc\n", 1, "whole number"),
    ("h1 slots=0\n", 1, "at least 1"),
    ("h1 slots=-1\n", 1, "whole number"),
    ("# c\nh1 max_slots=4\n", 2, "unknown entry 'max_slots=4'"),
    ("h1 slots=2 slots=3\n", 1, "slots given twice"),
    ("\n\nh1;reboot slots=2\n", 3, "bad host name"),
])
def test_bad_inventory_line_names_its_line_and_the_fix(text, line, words):
    with pytest.raises(inv.InventoryError) as err:
        inv.parse_hostfile(text, "inv")
    assert f"inv line {line}:" in str(err.value)
    assert words in str(err.value)


def test_empty_inventory_is_bad_input():
    with pytest.raises(inv.InventoryError, match="no hosts"):
        inv.parse_hostfile("# only a comment\n\n", "inv")


@pytest.mark.parametrize("name", ["h1;rm -rf /", "$(reboot)", "`id`", "-oProxyCommand=sh",
                                  "h1|x", "h1&", "a'b", 'a"b', "h1>f", "h 1", "é"])
def test_host_names_with_shell_metacharacters_or_a_leading_dash_are_rejected(name):
    with pytest.raises(inv.InventoryError, match="bad host name"):
        inv.check_name(name, "--hosts item 1")


@pytest.mark.parametrize("name", ["h1", "node-07.cluster.local", "10.0.0.1", "fe80::1", "n_1",
                                  "[fe80::1]"])
def test_ordinary_host_names_and_addresses_are_accepted(name):
    assert inv.check_name(name, "x") == name.strip("[]")


def test_hosts_argument_takes_optional_slots_and_bracketed_ipv6():
    got = inv.parse_hosts_arg("h1:2, h2 ,[fe80::1]:4,::1")
    assert [(h.name, h.slots) for h in got.hosts] == [
        ("h1", 2), ("h2", None), ("fe80::1", 4), ("::1", None)]


@pytest.mark.parametrize(("text", "words"), [
    ("h1:abc", "item 1: slots='abc'"), ("h1,h2:0", "item 2: slots='0'"),
    ("h1,,h2", "item 2 is empty"), ("", "--hosts is empty"), ("h1,-x", "item 2: bad host"),
])
def test_bad_hosts_argument_names_the_item(text, words):
    with pytest.raises(inv.InventoryError, match=words.replace("(", r"\(").replace("[", r"\[")):
        inv.parse_hosts_arg(text)


def test_default_inventory_is_this_machine_as_localhost():
    got = inv.load(None, None)
    assert got.names == ["localhost"]
    assert got.hosts[0].slots is None


def test_same_name_twice_is_a_duplicate():
    with pytest.raises(inv.InventoryError, match="listed twice"):
        inv.check_duplicates(inv.parse_hostfile("h1\nH1 slots=2\n", "inv"), no_resolver)


def test_same_host_by_name_and_by_address_is_a_duplicate():
    hosts = inv.parse_hostfile("h1 slots=2\nh2\n10.0.0.1 slots=2\n", "inv")
    resolver = fake_resolver({"h1": {"10.0.0.1"}, "h2": {"10.0.0.2"}, "10.0.0.1": {"10.0.0.1"}})
    with pytest.raises(inv.InventoryError) as err:
        inv.check_duplicates(hosts, resolver)
    assert "inv line 3: 10.0.0.1 is the same host as h1 (inv line 1)" in str(err.value)


def test_a_name_that_does_not_resolve_is_not_bad_input():
    hosts = inv.parse_hosts_arg("h1,nosuchhost.invalid")
    inv.check_duplicates(hosts, fake_resolver({"h1": {"10.0.0.1"}}))


def test_unreadable_inventory_file_is_bad_input(tmp_path):
    with pytest.raises(inv.InventoryError, match="cannot read the inventory"):
        inv.load(None, str(tmp_path / "missing"))


@pytest.mark.parametrize(("text", "line"), [
    ("h1 slots=2\nh2 slots=abc\n", 2), ("h1 slots=0\n", 1), ("h1 foo=1\n", 1),
    ("h1\nh1\n", 2), ("# nothing\n", None), ("h1\n`id` slots=1\n", 2),
])
def test_bad_inventory_exits_2_naming_the_line_and_writes_nothing(tmp_path, capsys, text, line):
    path = tmp_path / "inventory"
    path.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["--inventory", str(path), "--hostfile", str(out / "hostfile"),
                 "--report", str(out / "preflight.json"), "--quiet"])
    assert code == 2
    assert list(out.iterdir()) == []
    err = capsys.readouterr().err
    assert err.startswith("preflight: error: ")
    if line is not None:
        assert f"line {line}:" in err
