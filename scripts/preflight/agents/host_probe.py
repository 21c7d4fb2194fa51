"""What runs on each host: one look at the machine, printed as one JSON object.

The preflight sends this file's text over ssh to the remote Python's stdin, after a line with its
length in bytes, to a bootstrap given as `python -c` (pipeline.REMOTE_SH) that reads exactly
that much and runs it; so it must stand alone: the standard library, plus psutil when the host's
venv has it, with /sys, /proc and `ip -j` as fallbacks. It never imports TensorFlow (that costs
seconds); package versions come from the distributions' metadata files. Slow lookups (names,
mpirun, nvidia-smi, the neighbour table) run in threads with deadlines, so the probe finishes
in well under half a second on a healthy host.

With --stay, stdin stays open after the program and the session serves the next step: after
the facts the probe prints {"event": "parked"} and waits for one line, either nothing more
(end of input, or "done": it exits) or {"run": NAME, "source": TEXT, "argv": [...]}: it runs
that program's main(argv) in this process, on the same stdin and stdout. The mesh agent comes
this way, which spares every host a second ssh session (a login shell that reads the user's
~/.bashrc) and a second Python start.

Usage: python -c BOOTSTRAP --resolve h1 --resolve h2 --project DIR --script PATH --python PATH
       [--neighbours] [--stay] < (length line, this file)
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import ipaddress
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

PACKAGES = ("tensorflow", "tensorflow-cpu", "tf_keras", "horovod", "mpi4py", "numpy", "keras")
# What the training imports, by import name: where each is found on this sys.path (the host's
# PYTHONPATH included, as for the job's processes) and which version that copy is.
MODULES = ("tensorflow", "horovod", "mpi4py", "tf_keras")
VERSION_RE = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.M)
# Open MPI's remote daemon (orted up to 4.x, prted from 5.0), which mpirun starts over ssh; its
# usage text names its runtime, which tells it from a stand-in that merely exits.
DAEMONS = ("orted", "prted")
DAEMON_MARKS = ("OpenRTE", "PRRTE", "PRTE")
RESOLVE_DEADLINE_S = 2.0
COMMAND_TIMEOUT_S = 3.0
BUILD_FILE = "horovod-build.txt"
PARKED_MAX_S = 600.0  # --stay: how long a session waits for its next program at most

try:  # psutil is in the venv; a bare python3 (no venv yet) still gets the fallbacks
    import psutil
except ImportError:  # pragma: no cover - depends on the host
    psutil = None


def in_background(fn, *args):
    """Starts fn(*args) in a daemon thread; returns a getter that waits at most `deadline` s."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except Exception as exc:  # a probe reports, it never dies on one lookup
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def get(deadline: float):
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return None, "timed out"
        return box.get("value"), box.get("error")

    return get


def run_command(argv: list[str]) -> str | None:
    """stdout of argv, or None when the command is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          check=False)
    return proc.stdout if proc.returncode == 0 else None


def resolve(name: str) -> list[str]:
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return sorted({info[4][0] for info in infos})


def package_versions() -> dict[str, str | None]:
    """The installed version of each of PACKAGES: the first sys.path entry that has it, as
    importlib.metadata.version() would answer."""
    return {name: installed_version(name, sys.path) for name in PACKAGES}


# Distribution metadata read straight from the folders: importlib.metadata answers the same from
# the same files, but its import and its parsing of every distribution took the probe from 0.08
# to 0.14 CPU-seconds per host: a CPU-second over 16 simulated hosts that share two cores.
DIST_SUFFIXES = (".dist-info", ".egg-info")
_DISTS: dict[str, dict[str, str]] = {}


def normal(name: str) -> str:
    """A distribution name as the metadata compares them: case and runs of -_. do not count."""
    return re.sub(r"[-_.]+", "_", name).lower()


def dists_in(entry: str) -> dict[str, str]:
    """{normalised name: metadata path} of the distributions installed in one sys.path entry
    (name-version.dist-info, name-version-pyX.Y.egg-info or name.egg-info)."""
    if entry not in _DISTS:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # not a folder (a zip), or gone
            names = []
        found: dict[str, str] = {}
        for name in names:
            suffix = next((s for s in DIST_SUFFIXES if name.endswith(s)), None)
            if suffix:
                found.setdefault(normal(name[:-len(suffix)].split("-")[0]),
                                 os.path.join(entry or ".", name))
        _DISTS[entry] = found
    return _DISTS[entry]


def installed_version(name: str, entries: list[str]) -> str | None:
    key = normal(name)
    for entry in entries:
        where = dists_in(entry).get(key)
        if where is not None:
            return dist_version(where)
    return None


def dist_version(where: str) -> str | None:
    """The Version: header of a distribution's METADATA (PKG-INFO for an egg-info, which may
    also be that file itself)."""
    paths = [where] if os.path.isfile(where) else [os.path.join(where, "METADATA"),
                                                    os.path.join(where, "PKG-INFO")]
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():  # the headers end at the first blank line
                        break
        except OSError:
            continue
    return None


def top_level(where: str) -> list[str]:
    try:
        with open(os.path.join(where, "top_level.txt"), encoding="utf-8") as fh:
            return fh.read().split()
    except OSError:
        return []


def found_modules() -> dict[str, dict | None]:
    """For each of MODULES, where `import NAME` would load it from and that copy's version,
    without importing it (TensorFlow takes seconds); None where it is not found."""
    import importlib.util

    pythonpath = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                  if p}
    entries = [os.path.realpath(e or os.getcwd()) for e in sys.path]
    found: dict[str, dict | None] = {}
    for name in MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not (spec.origin or spec.submodule_search_locations):
            found[name] = None
            continue
        where = os.path.realpath(list(spec.submodule_search_locations or [])[0]
                                 if spec.submodule_search_locations else spec.origin)
        entry = max((e for e in entries if where.startswith(e + os.sep)), key=len, default="")
        found[name] = {"path": where, "entry": entry, "from_pythonpath": entry in pythonpath,
                       "version": version_in(entry, name) or version_of_source(where)}
    return found


def version_in(entry: str, name: str) -> str | None:
    """The version of the distribution installed in sys.path entry `entry` that provides the
    import name `name`: the one of that name, else one that lists it in its top_level.txt
    (tensorflow-cpu provides tensorflow)."""
    if not entry:
        return None
    dists = dists_in(entry)
    where = dists.get(normal(name)) or next(
        (w for w in dists.values() if name in top_level(w)), None)
    return dist_version(where) if where else None


def version_of_source(where: str) -> str | None:
    """__version__ as written in the package's __init__.py (a copy without metadata)."""
    init = os.path.join(where, "__init__.py") if os.path.isdir(where) else where
    try:
        with open(init, encoding="utf-8", errors="replace") as fh:
            match = VERSION_RE.search(fh.read(16384))
    except OSError:
        return None
    return match.group(1) if match else None


def mpi_daemon() -> dict:
    """Open MPI's remote daemon as a non-interactive ssh session finds it on PATH, and whether
    it starts: mpirun on another host starts it this way, and fails for every host when it
    cannot."""
    for name in DAEMONS:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            proc = subprocess.run([path, "--help"], capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"name": name, "path": path, "runs": False, "error": str(exc)}
        text = proc.stdout + proc.stderr
        runs = any(mark in text for mark in DAEMON_MARKS)
        return {"name": name, "path": path, "runs": runs,
                "error": None if runs else (first_line(text) or f"exit {proc.returncode}")}
    return {"name": DAEMONS[0], "path": None, "runs": False,
            "error": f"none of {', '.join(DAEMONS)} on PATH={os.environ.get('PATH', '')}"}


def session_dir() -> dict:
    """Where Open MPI's daemon and ranks put their session directory (opal_tmp_directory():
    $TMPDIR, else $TEMP, else $TMP, else /tmp), whether a directory can be made there, and the
    space left: without it the daemon starts and then cannot run."""
    source = next((name for name in ("TMPDIR", "TEMP", "TMP") if os.environ.get(name)), None)
    base = os.environ[source] if source else "/tmp"
    found = {"path": base, "source": source or "default", "writable": False, "free": None,
             "error": None}
    try:
        os.rmdir(tempfile.mkdtemp(prefix="preflight-session-", dir=base))
        found["writable"] = True
        found["free"] = shutil.disk_usage(base).free
    except OSError as exc:
        found["error"] = f"{type(exc).__name__}: {exc.strerror or exc}"
    return found


def missing_libraries(daemon: dict) -> dict[str, list[str]]:
    """{program or module: [shared libraries ldd cannot find]} for the daemon (when it does not
    start: one that does found its libraries) and mpi4py's MPI extension (what a rank loads),
    where any is missing. mpi4py 4 ships one extension per MPI ABI (MPI.openmpi...,
    MPI.mpich...) and loads the one whose library is there: one complete variant is enough."""
    missing = {}
    if daemon.get("path") and not daemon.get("runs"):
        lost = unresolved(daemon["path"])
        if lost:
            missing[daemon["path"]] = lost
    spec = importlib.util.find_spec("mpi4py")
    entries = (spec.submodule_search_locations or []) if spec is not None else []
    variants = sorted((path for entry in entries
                       for path in glob.glob(os.path.join(entry, "MPI*.so"))),
                      key=lambda path: "openmpi" not in os.path.basename(path))
    lost_by_variant: dict[str, list[str]] = {}
    for path in variants:  # Open MPI's first: the one this project uses
        lost_by_variant[path] = unresolved(path)
        if not lost_by_variant[path]:
            return missing
    if lost_by_variant:
        fewest = min(lost_by_variant, key=lambda path: len(lost_by_variant[path]))
        missing[fewest] = lost_by_variant[fewest]
    return missing


def unresolved(path: str) -> list[str]:
    """The shared libraries of `path` that the loader cannot find (ldd's "not found")."""
    text = run_command(["ldd", os.path.realpath(path)]) or ""
    return [line.split("=>")[0].strip() for line in text.splitlines() if "not found" in line]


def daemon_needs() -> dict:
    daemon = mpi_daemon()
    return {"daemon": daemon, "session_dir": session_dir(),
            "missing_libraries": missing_libraries(daemon)}


def horovod_build() -> dict[str, bool] | None:
    """Parses `horovodrun --check-build` output that setup.sh saved next to the venv."""
    path = os.path.join(sys.prefix, BUILD_FILE)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    flags: dict[str, bool] = {}
    for line in lines:
        text = line.strip()
        if text.startswith("[X]") or text.startswith("[ ]"):
            flags[text[3:].strip()] = text.startswith("[X]")
    return flags


def first_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else None


def read_sys(name: str, leaf: str) -> str | None:
    try:
        with open(f"/sys/class/net/{name}/{leaf}", encoding="ascii") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def sys_speed(name: str) -> int:
    value = read_sys(name, "speed")
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


def interfaces_psutil() -> list[dict]:
    stats = psutil.net_if_stats()
    result = []
    for name, addrs in psutil.net_if_addrs().items():
        stat = stats.get(name)
        entry = new_interface(name)
        if stat is not None:
            entry.update(mtu=stat.mtu, speed=stat.speed or sys_speed(name), isup=stat.isup)
            entry["loopback"] = "loopback" in (getattr(stat, "flags", "") or "")
        for addr in addrs:
            if addr.family == socket.AF_INET:
                entry["ipv4"].append(with_prefix(addr.address, addr.netmask))
            elif addr.family == socket.AF_INET6:
                entry["ipv6"].append(with_prefix(addr.address.split("%")[0], addr.netmask))
            elif addr.family == getattr(psutil, "AF_LINK", None):
                entry["mac"] = addr.address
        result.append(entry)
    return result


def interfaces_ip() -> list[dict]:
    out = run_command(["ip", "-j", "addr"])
    result = []
    for link in json.loads(out) if out else []:
        entry = new_interface(link["ifname"])
        flags = link.get("flags", [])
        entry.update(mtu=link.get("mtu", 0), mac=link.get("address"), isup="UP" in flags,
                     loopback="LOOPBACK" in flags, speed=sys_speed(link["ifname"]))
        for info in link.get("addr_info", []):
            key = {"inet": "ipv4", "inet6": "ipv6"}.get(info.get("family"))
            if key:
                entry[key].append(f"{info['local']}/{info['prefixlen']}")
        result.append(entry)
    return result


def new_interface(name: str) -> dict:
    return {"name": name, "ipv4": [], "ipv6": [], "mac": None, "mtu": 0, "speed": 0,
            "isup": False, "loopback": False,
            "virtual": os.path.exists(f"/sys/devices/virtual/net/{name}"),
            "bridge": os.path.exists(f"/sys/class/net/{name}/bridge")}


def with_prefix(address: str, netmask: str | None) -> str:
    if not netmask:
        return address
    try:  # IPv6 masks come as addresses (ffff:ffff::); count their bits
        prefix = bin(int(ipaddress.ip_address(netmask))).count("1")
        return str(ipaddress.ip_interface(f"{address}/{prefix}"))
    except ValueError:
        return address


def interfaces() -> list[dict]:
    found = interfaces_psutil() if psutil is not None else interfaces_ip()
    for entry in found:  # lo is loopback even where the flags were not readable
        addrs = entry["ipv4"] + entry["ipv6"]
        if entry["name"] == "lo" or any(ipaddress.ip_interface(a).is_loopback for a in addrs):
            entry["loopback"] = True
    return sorted(found, key=lambda e: e["name"])


def cores() -> tuple[int | None, int | None]:
    logical = os.cpu_count()
    physical = psutil.cpu_count(logical=False) if psutil is not None else None
    if physical is None:
        physical = cpuinfo_cores()
    return physical, logical


def cpuinfo_cores() -> int | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    seen, phys = set(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            seen.add((phys, value.strip()))
    return len(seen) or None


def memory() -> tuple[int | None, int | None]:
    if psutil is not None:
        mem = psutil.virtual_memory()
        return mem.total, mem.available
    values = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None, None
    return values.get("MemTotal"), values.get("MemAvailable")


def disk(path: str) -> tuple[int | None, int | None]:
    """Total and free bytes of the file system holding path (or its nearest existing parent)."""
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        usage = shutil.disk_usage(path or "/")
    except OSError:
        return None, None
    return usage.total, usage.free


def gpu_count() -> int | None:
    """GPUs listed by nvidia-smi -L, or None where there is no nvidia-smi."""
    out = run_command(["nvidia-smi", "-L"])
    if out is None:
        return None
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def neighbours() -> list[dict]:
    out = run_command(["ip", "-j", "neigh"])
    table = []
    for entry in json.loads(out) if out else []:
        if "dst" in entry:
            table.append({"address": entry["dst"], "dev": entry.get("dev"),
                          "mac": entry.get("lladdr"), "state": entry.get("state", [])})
    return table


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="probe")
    parser.add_argument("--resolve", action="append", default=[])
    parser.add_argument("--project", default=os.getcwd())
    parser.add_argument("--script", default="")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--neighbours", action="store_true")
    parser.add_argument("--stay", action="store_true",
                        help="after the facts, wait for a next program on stdin")
    return parser.parse_args(argv)


def probe(args: argparse.Namespace) -> dict:
    hostname = socket.gethostname()
    names = list(dict.fromkeys([*args.resolve, hostname]))
    lookups = {name: in_background(resolve, name) for name in names}
    fqdn = in_background(socket.getfqdn)
    mpirun = in_background(run_command, ["mpirun", "--version"])
    daemon = in_background(daemon_needs)
    modules = in_background(found_modules)
    gpus = in_background(gpu_count)
    neigh = in_background(neighbours) if args.neighbours else None
    physical, logical = cores()
    mem_total, mem_available = memory()
    disk_total, disk_free = disk(args.project)
    shm_total, shm_free = disk("/dev/shm") if os.path.isdir("/dev/shm") else (None, None)
    facts = {
        "hostname": hostname,
        "python": platform.python_version(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "packages": package_versions(),
        "horovod_build": horovod_build(),
        "interfaces": interfaces(),
        "physical_cores": physical,
        "logical_cores": logical,
        "memory_total": mem_total,
        "memory_available": mem_available,
        "project": args.project,
        "disk_total": disk_total,
        "disk_free": disk_free,
        "shm_total": shm_total,
        "shm_free": shm_free,
        "venv_python": args.python,
        "venv_python_exists": os.access(args.python, os.X_OK),
        "script": args.script,
        "script_exists": bool(args.script) and os.path.isfile(args.script),
        "psutil": psutil is not None,
    }
    deadline = time.monotonic() + RESOLVE_DEADLINE_S
    facts["resolved"] = {}
    for name, get in lookups.items():
        value, error = get(deadline)
        facts["resolved"][name] = {"addresses": value or [], "error": error}
    facts["fqdn"] = fqdn(deadline)[0] or hostname
    facts["mpirun"] = first_line(mpirun(deadline)[0])
    needs = daemon(deadline)[0] or {}
    facts["mpi_daemon"] = needs.get("daemon")
    facts["session_dir"] = needs.get("session_dir")
    facts["missing_libraries"] = needs.get("missing_libraries")
    facts["modules"] = modules(deadline)[0]
    facts["pythonpath"] = os.environ.get("PYTHONPATH") or None
    facts["gpus"] = gpus(deadline)[0]
    facts["neighbours"] = neigh(deadline)[0] if neigh else None
    facts["time"] = time.time()  # last, so it sits inside the launcher's request window
    return facts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    json.dump(probe(args), sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    sys.stdout.flush()
    return serve_next() if args.stay else 0


def serve_next() -> int:
    """--stay: says the facts are complete, then runs the program that comes on stdin, if any.
    A watchdog ends a session nobody talks to any more; the program sets its own."""
    sys.stdout.write(json.dumps({"event": "parked"}) + "\n")
    sys.stdout.flush()
    watchdog = threading.Timer(PARKED_MAX_S, os._exit, args=(3,))
    watchdog.daemon = True
    watchdog.start()
    line = sys.stdin.readline()
    watchdog.cancel()
    if not line.strip() or line.strip() == "done":
        return 0
    command = json.loads(line)
    module = {"__name__": command["run"]}  # not "__main__": its own main() is called below
    exec(compile(command["source"], command["run"], "exec"), module)
    return int(module["main"](list(command.get("argv", []))) or 0)


if __name__ == "__main__":
    sys.exit(main())
