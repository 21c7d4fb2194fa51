"""Does every host run the same software as the launcher, as the job will load it.

The host probe runs over the same non-interactive ssh as the launch, so it sees the same PATH
and PYTHONPATH: it reports where `import horovod` (tensorflow, mpi4py, tf_keras) would load
from and that copy's version, not just the installed package metadata, which a PYTHONPATH entry
shadows unseen.

Ids:
- `software.versions`: Python (major.minor), TensorFlow, tf_keras, Horovod and its build (MPI,
  Gloo, NCCL), mpi4py and the MPI library agree with the launching host, as imported; Horovod is
  installed and built with MPI and Gloo; no PYTHONPATH entry shadows the venv's copy with
  another version.
- `software.orted`: Open MPI's remote daemon (`orted`) is on the host's non-interactive PATH and
  starts, so mpirun from the launcher can start the host's ranks. The launcher itself needs none.
- `software.session_dir`: the directory where Open MPI's daemon and ranks make their session
  directory ($TMPDIR, else $TEMP, $TMP, /tmp, as an ssh session sees them) takes a new directory
  and has room: without it the daemon starts, then cannot run.
- `software.libraries`: every shared library of the daemon and of mpi4py's MPI module (what a
  rank loads) is found by the loader.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..facts import Facts, FoundModule
from ..result import CheckResult, failed, no_facts, passed, skipped, warned
from .context import Context

FAMILY = "software"
VERSIONS = "software.versions"
ORTED = "software.orted"
SESSION_DIR = "software.session_dir"
LIBRARIES = "software.libraries"
IDS = (VERSIONS, ORTED, SESSION_DIR, LIBRARIES)
SESSION_MIN_FREE = 64 << 20  # Open MPI's session files are small; shared-memory backing is not
STAGE = "host"
REQUIRED_BUILD = ("MPI", "Gloo")
COMPARED_BUILD = ("TensorFlow", "MPI", "Gloo", "NCCL")
# Import name -> the name in messages, and the package metadata names to fall back on (facts
# from a probe that did not look at imports).
IMPORTED = {"tensorflow": ("TensorFlow", ("tensorflow", "tensorflow-cpu")),
            "tf_keras": ("tf_keras", ("tf_keras", "tf-keras")),
            "horovod": ("Horovod", ("horovod",)),
            "mpi4py": ("mpi4py", ("mpi4py",))}


def check(host: str, ctx: Context) -> list[CheckResult]:
    f = ctx.facts.get(host)
    if f is None or ctx.reference is None:
        return no_facts(*IDS)
    reference = majority(ctx.facts, ctx.reference)
    label = (f"launcher {reference}" if reference == ctx.reference
             else f"most hosts, e.g. {reference}")
    return [check_versions(host, f, ctx.facts[reference], reference, label),
            check_orted(host, f, ctx.probes[host].local, ctx.mpi),
            check_session_dir(host, f), check_libraries(host, f)]


def check_session_dir(host: str, f: Facts) -> CheckResult:
    found = f.session_dir
    if found is None:
        return skipped(SESSION_DIR, "not probed")
    where = (f"{found.path} (from ${found.source})" if found.source != "default"
             else f"{found.path} (no TMPDIR set)")
    if not found.writable:
        return failed(SESSION_DIR, f"Open MPI's session directory cannot be made in {where} on "
                                   f"{host}: {found.error}; its daemon would start, then fail",
                      f"make {found.path} exist and writable on {host}, or set TMPDIR for "
                      f"non-interactive ssh sessions there to a directory that is")
    if found.free is not None and found.free < SESSION_MIN_FREE:
        return failed(SESSION_DIR, f"{where} on {host} has {found.free >> 20} MiB free: too "
                                   f"little for Open MPI's session files",
                      f"free space in {found.path} on {host}, or point TMPDIR elsewhere")
    free = f", {found.free >> 30} GiB free" if found.free is not None else ""
    return passed(SESSION_DIR, f"Open MPI's session directory can be made in {where}{free}")


def check_libraries(host: str, f: Facts) -> CheckResult:
    if f.missing_libraries is None:
        return skipped(LIBRARIES, "not probed")
    if f.missing_libraries:
        lost = "; ".join(f"{program} needs {', '.join(libs)}"
                         for program, libs in f.missing_libraries.items())
        return failed(LIBRARIES, f"shared libraries not found on {host}: {lost}",
                      f"install them on {host} (the same Open MPI as on the launcher: make setup "
                      f"there), or add their directory to LD_LIBRARY_PATH for non-interactive "
                      f"ssh sessions")
    return passed(LIBRARIES, "Open MPI's daemon and mpi4py's MPI module find every shared library")


def majority(facts: Mapping[str, Facts], launcher: str) -> str:
    """The host whose software most hosts share, so that a launcher that is the odd one out is
    the host that fails; the launcher wins a tie."""
    groups: dict[tuple, list[str]] = {}
    for host, f in facts.items():
        groups.setdefault(tuple(versions(f).items()), []).append(host)
    best = max(groups.values(), key=lambda hosts: (len(hosts), launcher in hosts))
    return launcher if launcher in best else best[0]


def imported(f: Facts, name: str) -> str | None:
    """The version `import name` loads on the host (installed metadata for older facts)."""
    found = f.modules.get(name) if f.modules is not None else None
    if found is not None:
        return found.version or "unknown version"
    if f.modules is not None and name in f.modules:
        return None  # looked for, not found
    return next((f.packages[p] for p in IMPORTED[name][1] if f.packages.get(p)), None)


def versions(f: Facts) -> dict[str, str | None]:
    """What must agree across hosts, as comparable strings (None: missing)."""
    build = f.horovod_build or {}
    built = ",".join(p for p in COMPARED_BUILD if build.get(p)) if f.horovod_build else None
    return {
        "Python": ".".join(f.python.split(".")[:2]) or None,
        "TensorFlow": imported(f, "tensorflow"),
        "tf_keras": imported(f, "tf_keras"),
        "Horovod": imported(f, "horovod"),
        "Horovod build": built,
        "mpi4py": imported(f, "mpi4py"),
        "MPI": f.mpirun,
    }


def shadowed(f: Facts) -> list[tuple[str, FoundModule, str]]:
    """(import name, the copy found, the venv's version) where a PYTHONPATH entry puts another
    version ahead of the one installed in the host's Python."""
    found = []
    for name, module in (f.modules or {}).items():
        installed = next((f.packages[p] for p in IMPORTED[name][1] if f.packages.get(p)), None)
        if module and module.from_pythonpath and installed and module.version != installed:
            found.append((name, module, installed))
    return found


def check_versions(host: str, f: Facts, reference: Facts, reference_host: str,
                   label: str | None = None) -> CheckResult:
    """software.versions for `host` against the reference host's facts (the launcher's, unless
    most hosts agree on something else)."""
    label = label or f"launcher {reference_host}"
    remedy = f"run make setup on {host}"
    shadows = shadowed(f)
    if shadows:
        return shadow_failure(host, f, shadows)
    mine, theirs = versions(f), versions(reference)
    if not mine["Horovod"]:
        return failed(VERSIONS, f"Horovod is not installed for {f.executable}", remedy)
    if f.horovod_build is not None:
        missing = [p for p in REQUIRED_BUILD if not f.horovod_build.get(p)]
        if missing:
            return failed(VERSIONS,
                          f"Horovod on {host} was built without {' and '.join(missing)}",
                          f"rebuild Horovod: make setup FORCE=1 on {host}")
    differ = [f"{k} {mine[k] or 'missing'} ({label}: {theirs[k] or 'missing'})"
              f"{located(f, k)}" for k in mine if mine[k] != theirs[k]]
    if differ:
        whom = "the launcher" if label.startswith("launcher") else "most hosts"
        return failed(VERSIONS, f"differs from {whom}: " + "; ".join(differ), remedy)
    summary = ", ".join(f"{k} {v}" for k, v in mine.items() if v)
    if f.horovod_build is None:
        return warned(VERSIONS, summary + "; Horovod build flags unknown",
                      f"record them: run make setup on {host} (it saves horovodrun "
                      "--check-build)")
    return passed(VERSIONS, summary)


def located(f: Facts, label: str) -> str:
    """' from PATH' for a version that comes from a module found outside the host's Python."""
    name = next((n for n, (shown, _) in IMPORTED.items() if shown == label), None)
    module = (f.modules or {}).get(name) if name else None
    if module is None or module.entry.startswith(f.prefix.rstrip("/") + "/"):
        return ""
    return f" from {module.path}"


def shadow_failure(host: str, f: Facts, shadows: list[tuple[str, FoundModule, str]]
                   ) -> CheckResult:
    parts = [f"import {name} loads {module.version or 'an unknown version'} from {module.path} "
             f"(PYTHONPATH entry {module.entry}) instead of the {installed} installed for "
             f"{f.executable}" for name, module, installed in shadows]
    entries = ", ".join(dict.fromkeys(module.entry for _, module, _ in shadows))
    return failed(VERSIONS, f"on {host} " + "; ".join(parts) + f" (PYTHONPATH={f.pythonpath})",
                  f"take {entries} out of PYTHONPATH for non-interactive ssh sessions on {host} "
                  "(sshd_config SetEnv/AcceptEnv, ~/.bashrc, /etc/environment), or remove the "
                  "copy there")


def check_orted(host: str, f: Facts, local: bool, mpi: bool) -> CheckResult:
    """software.orted: mpirun on the launcher starts this daemon on every other host."""
    daemon = f.mpi_daemon
    if daemon is None:
        return skipped(ORTED, "not probed")
    if local:
        return passed(ORTED, "the launcher: mpirun starts its ranks here itself")
    if daemon.runs:
        return passed(ORTED, f"{daemon.path} starts over non-interactive ssh")
    if daemon.path:
        detail = (f"{daemon.path} on {host} does not start as Open MPI's daemon over "
                  f"non-interactive ssh ({daemon.name} --help said: {daemon.error})")
    else:
        detail = f"no {daemon.name} on {host}'s non-interactive PATH ({daemon.error})"
    remedy = (f"make {daemon.name} run on {host} for non-interactive ssh: install Open MPI "
              f"there (make setup) or put its bin directory on PATH before ~/.bashrc returns for "
              f"non-interactive shells; check: ssh {host} {daemon.name} --help")
    if not mpi:  # Gloo (elastic) jobs start no MPI daemon
        return warned(ORTED, detail + "; only MPI jobs need it", remedy)
    return failed(ORTED, detail + "; mpirun cannot start ranks there", remedy)
