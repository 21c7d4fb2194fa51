"""The preflight from inventory to report: probes, checks, the decision, the active tests.

inventory -> one probe per host, all at once -> checks on the facts -> the interface and the
healthy hosts -> mesh and MTU between them -> an MPI allreduce over the rest -> Report.
A host that fails a step is left out of the steps after it, and gets `skip` there.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from . import agents, checks, fanout
from .active import deep, networks
from .active import mesh as mesh_runner
from .active import mpi as mpi_runner
from .agents import parse_event
from .agents.mpi_probe import ALL_PAIRS_UP_TO, MATCHINGS, partners
from .checks import interface as interface_check
from .checks import loss, mesh, mpi, mtu, resolve
from .checks.context import Context
from .choice import InterfaceChoice, choose_interface, contenders, fall_back
from .cost import Phases
from .errors import UserError
from .facts import Facts, HostProbe, Interface
from .inventory import Host, Inventory
from .launch.command import network_interfaces
from .proc import Ran
from .remote import Session, Ssh, is_local
from .result import CheckResult, HostReport, Report, Status, failed, skipped

PROJECT_DIR = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = PROJECT_DIR / "template" / "train.py"
# Runs the venv's Python where it exists, else python3, on the probe sent on stdin after a line
# with its length: exactly that much is read, so stdin stays open for the session's next step.
BOOTSTRAP = ("import sys; n = int(sys.stdin.buffer.readline()); "
             "exec(compile(sys.stdin.buffer.read(n), 'host_probe', 'exec'))")
REMOTE_SH = f'p="$1"; shift; [ -x "$p" ] || p=python3; exec "$p" -c "{BOOTSTRAP}" "$@"'
Say = Callable[[str], None]
DEEP_MIN_S = 90.0  # the deep check's budget at least: a TensorFlow import on every host
PARKED = "parked"  # the probe's line after its facts (agents/host_probe.py, --stay)
FAN_OUT_MOST = 256  # probes at once at most (threads here); fanout.Window picks
PROGRESS_EVERY_S = 5.0  # a progress line while the probes come in
STRAGGLER_MIN_S = 2.0  # a host is a straggler once it took this long, and
STRAGGLER_FACTOR = 3.0  # this many times the median answer
MPI_SPLIT = ("launch_s", "pairs_s", "collectives_s")  # active/mpi.py phase_seconds()
MESH_IDS = (mesh.CHECK_ID, mtu.CHECK_ID, loss.CHECK_ID)  # what the mesh step gives each host


@dataclass(frozen=True)
class Options:
    timeout_s: float = 10.0
    bandwidth: bool = False
    mpi: bool = True
    neighbours: bool = False
    elastic: bool = False  # the job runs over Gloo: host names must be unique
    deep: bool = False  # also one real Horovod allreduce through horovodrun
    python: str = sys.executable
    project: str = str(PROJECT_DIR)
    script: str = str(TRAIN_SCRIPT)
    seed: int | None = None  # of the random pairings beyond ALL_PAIRS_UP_TO hosts; None: new
    interface: str | None = None  # --interface: a name or CIDR that forces the choice


@dataclass(frozen=True)
class Outcome:
    report: Report
    choice: InterfaceChoice
    matrices: dict = field(default_factory=dict)
    candidates: tuple[dict, ...] = ()  # neighbour-table entries that are not inventory hosts
    checks_run: tuple[str, ...] = ()
    interfaces: Mapping[str, tuple[Interface, ...]] = field(default_factory=dict)  # per host
    sampling: dict = field(default_factory=dict)  # which pairs the pairwise steps measured
    phases: dict = field(default_factory=dict)  # phase -> wall_s, launcher_cpu_s (cost.py)


def probe_argv(names: list[str], options: Options) -> list[str]:
    argv = ["sh", "-c", REMOTE_SH, "sh", options.python]
    for name in names:
        argv += ["--resolve", name]
    argv += ["--project", options.project, "--script", options.script, "--python", options.python,
             "--stay"]
    return argv + (["--neighbours"] if options.neighbours else [])


def probe_host(ssh: Ssh, host: str, argv: list[str], source: str, timeout_s: float
               ) -> HostProbe:
    """The probe on host. Its session stays open once the facts are in (--stay), parked in
    `ssh` for the mesh step to run its agent on: no second login on the host."""
    sent = time.time()
    result, session = probe_session(ssh, host, argv, source, timeout_s)
    received = time.time()
    if session is not None:
        ssh.park(host, session)
    facts, error = None, None
    if result.ok:
        facts, error = parse_facts(result.stdout)
    return HostProbe(host, is_local(host), result, facts, error, sent, received)


def probe_hosts(names: list[str], attempt: Callable[[str], HostProbe],
                pending: list[Future] | None = None, timeout_s: float = 10.0,
                on_answer: Callable[[int], None] = lambda _done: None
                ) -> dict[str, HostProbe]:
    """The probe on every host, as many at once as the launcher absorbs (fanout.Window). A host
    that has not answered once the crowd is done (all but a tenth answered, and it took
    STRAGGLER_FACTOR times their median) is tried again then, alone, with the full timeout,
    while its first attempt runs on; one whose first attempt failed is tried again too. So a
    timeout is confirmed after the crowd, and a dead host costs the healthy time plus about one
    timeout. The second attempt's answer counts when the first has none (HostProbe.first keeps
    the first). A second try whose first answered meanwhile is not waited for: it goes to
    `pending`, for the caller to wait on before it closes ssh. on_answer(n): n hosts are done."""
    window = fanout.Window(timeout_s, FAN_OUT_MOST)
    again_pool = ThreadPoolExecutor(max_workers=window.largest)
    with ThreadPoolExecutor(max_workers=window.largest) as pool:
        first, started = fanout.start_all(names, attempt, window, pool,
                                          lambda p: p.received - p.sent, on_answer)
        wait_for_crowd(first, started)
        again = {name: again_pool.submit(attempt, name) for name, f in first.items()
                 if not f.done() or f.result().facts is None}
        probes = {name: f.result() for name, f in first.items()}
    for name, future in again.items():
        if probes[name].facts is None:
            probes[name] = dataclasses.replace(future.result(), first=probes[name].result)
        elif pending is not None:
            pending.append(future)
    again_pool.shutdown(wait=pending is None)
    return probes


def wait_for_crowd(first: Mapping[str, Future], started: Mapping[str, float]) -> None:
    """Returns once every first attempt is done, or the few left are stragglers: each has run
    STRAGGLER_FACTOR times the median answer (at least STRAGGLER_MIN_S) since it started."""
    allowed = max(1, len(first) // 10) if len(first) > 1 else 0
    while True:
        done = [f.result() for f in first.values() if f.done()]
        left = [name for name, f in first.items() if not f.done()]
        if not left:
            return
        if done and len(left) <= allowed:
            typical_s = statistics.median(p.received - p.sent for p in done)
            least_s = max(STRAGGLER_MIN_S, STRAGGLER_FACTOR * typical_s)
            if all(time.monotonic() - started[name] >= least_s for name in left):
                return
        wait([first[name] for name in left], timeout=0.1, return_when=FIRST_COMPLETED)


def every_few_seconds(say: Say, hosts: int) -> Callable[[int], None]:
    """A progress line as hosts answer, at most every PROGRESS_EVERY_S."""
    last = [time.monotonic()]

    def answered(done: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S and done < hosts:
            last[0] = time.monotonic()
            say(f"{done} of {hosts} host(s) answered")
    return answered


def probe_session(ssh: Ssh, host: str, argv: list[str], source: str, timeout_s: float
                  ) -> tuple[Ran, Session | None]:
    """What the probe printed up to its "parked" line, as a Ran (exit status 0: it is still
    running), and its session; or, where it ended or was stopped first, how it ended."""
    payload = source.encode()
    try:
        session = ssh.session(host, argv)
    except OSError as exc:  # no ssh client, say: as proc.run reports a missing program
        return Ran(tuple(argv), 127, "", str(exc), 0.0), None
    session.send(f"{len(payload)}\n{source}", end="")
    deadline, lines = session.started + timeout_s, []
    while True:
        try:
            line = session.read_line(deadline)
        except TimeoutError:
            return session.stop("".join(lines)), None
        if line is None:  # it ended before parking: its exit status and stderr say how
            return session.finish("".join(lines)), None
        if (parse_event(line) or {}).get("event") == PARKED:
            return session.ran("".join(lines)), session
        lines.append(line)


def parse_facts(stdout: str) -> tuple[Facts | None, str | None]:
    """The probe's JSON: the last line that looks like an object (a chatty shell may print more)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        return None, "no JSON in the output"
    try:
        return Facts.from_json(lines[-1]), None
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def run(inventory: Inventory, options: Options, say: Say = lambda _: None,
        phases: Phases | None = None) -> Outcome:
    names = inventory.names
    results: dict[str, list[CheckResult]] = {name: [] for name in names}
    with Ssh(connect_timeout_s=max(1, int(options.timeout_s * 0.6))) as ssh:
        phases = phases or Phases()
        phases.marker = ssh.control_dir
        say(f"probing {len(names)} host(s)")
        started = time.monotonic()
        argv, source = probe_argv(names, options), agents.source("host_probe")
        retries: list[Future] = []  # second tries nobody waits for: done before ssh closes
        with phases.phase("probe"):
            probes = probe_hosts(names, lambda h: probe_host(ssh, h, argv, source,
                                                               options.timeout_s), retries,
                                 options.timeout_s, every_few_seconds(say, len(names)))
        facts = {h: p.facts for h, p in probes.items() if p.facts is not None}
        say(f"facts from {len(facts)} of {len(names)} host(s) in "
            f"{time.monotonic() - started:.1f} s")
        choice = pick_network(ssh, inventory, probes, facts, options, say, phases)
        with phases.phase("checks"):
            slots = host_slots(inventory.hosts, facts)
            host_checks(inventory, probes, facts, slots, choice, options, results)
        seed = random.randrange(2**31) if options.seed is None else options.seed
        options = dataclasses.replace(options, seed=seed)
        choice, matrices, sampled = active_tests(ssh, choice, slots, options, results, say,
                                                 phases, facts)
        matrices.update(network_rates(choice))
        wait(retries)
    report = Report(
        hosts=tuple(HostReport(n, choice.addresses.get(n) or first_address(n, facts), slots[n],
                               tuple(results[n]), choice.names.get(n)) for n in names),
        interface=choice.interface, interface_cidr=choice.cidr)
    checks_run = tuple(dict.fromkeys(c.id for n in names for c in results[n]))
    return Outcome(report, choice, matrices, candidates(facts, names), checks_run,
                   {n: facts[n].interfaces for n in names if n in facts},
                   sampled, phases.as_dict())


def network_rates(choice: InterfaceChoice) -> dict:
    """The chosen network's bursts, {"network_MBps": {a: {b: MB/s}}}, where networks were
    raced: without --bandwidth, the scaling prediction's links (scaling.ring)."""
    chosen = next((c for c in choice.carried if c.cidr == choice.cidr), None)
    rates: dict[str, dict[str, float]] = {}
    for pair in chosen.worked if chosen else ():
        rates.setdefault(pair["from"], {})[pair["to"]] = pair["MBps"]
    return {"network_MBps": rates} if rates else {}


def sampling(hosts: int, seed: int) -> dict:
    """Which pairs the mesh step (mesh, MTU, loss) measured between `hosts` hosts, for the
    report; the MPI pairs follow the same design over the hosts left."""
    pairs = sum(len(p) for p in partners(hosts, seed)) // 2
    every = hosts * (hosts - 1) // 2
    if hosts <= ALL_PAIRS_UP_TO:
        return {"design": "all pairs", "hosts": hosts, "pairs": pairs, "of": every}
    return {"design": f"ring + {MATCHINGS} random perfect matchings", "hosts": hosts,
            "pairs": pairs, "of": every, "seed": seed, "all_pairs_up_to": ALL_PAIRS_UP_TO}


def host_slots(hosts: tuple[Host, ...], facts: Mapping[str, Facts]) -> dict[str, int]:
    """Inventory slots, else what the host has (GPUs, else physical cores); 0 when unknown."""
    return {h.name: h.slots if h.slots is not None else
            (facts[h.name].default_slots if h.name in facts else 0) for h in hosts}


def launcher(inventory: Inventory, probes: Mapping[str, HostProbe],
             facts: Mapping[str, Facts]) -> str | None:
    """The host whose software the others must match: this machine if listed, else the first."""
    order = [h for h in inventory.names if probes[h].local] + inventory.names
    return next((h for h in order if h in facts), None)


def pick_network(ssh: Ssh, inventory: Inventory, probes: Mapping[str, HostProbe],
                 facts: Mapping[str, Facts], options: Options, say: Say, phases: Phases
                 ) -> InterfaceChoice:
    """The subnet for the job (choice.py); where several reach the same hosts, after a race
    of what each carries (active/networks.py)."""
    names = inventory.names
    resolved = {n: resolve.resolved_addresses(n, facts) for n in names}
    alone_here = len(names) == 1 and probes[names[0]].local
    rivals = contenders(facts, resolved) if not alone_here else []
    carried = []
    if len(rivals) > 1:
        with phases.phase("networks"):
            carried = networks.race(ssh, rivals, options.python, options.timeout_s,
                                    options.bandwidth, say)
    return choose_interface(facts, resolved, names, alone_here, options.interface, carried)


def host_checks(inventory: Inventory, probes: Mapping[str, HostProbe],
                facts: Mapping[str, Facts], slots: Mapping[str, int], choice: InterfaceChoice,
                options: Options, results: dict[str, list[CheckResult]]) -> None:
    """Every host family of the registry on every host, with the interface chosen."""
    ctx = Context(probes, facts, choice, slots,
                  frozenset(h.name for h in inventory.hosts if h.slots is not None),
                  launcher(inventory, probes, facts), options.timeout_s, mpi=options.mpi,
                  strict_names=options.elastic or any(f.gpus for f in facts.values()))
    for name in inventory.names:
        for family in checks.HOST_FAMILIES:
            results[name] += family.check(name, ctx)


def healthy(names: list[str], results: Mapping[str, list[CheckResult]]) -> list[str]:
    return [n for n in names if all(c.status is not Status.FAIL for c in results[n])]


def active_tests(ssh: Ssh, choice: InterfaceChoice, slots: Mapping[str, int], options: Options,
                 results: dict[str, list[CheckResult]], say: Say, phases: Phases,
                 facts: Mapping[str, Facts]) -> tuple[InterfaceChoice, dict, dict]:
    """The mesh, MPI (and deep) steps: the network they ran on (another raced one where the
    mesh failed most hosts on the first: verified_mesh), their MPI measurements, what the mesh
    sampled."""
    names = list(results)
    ready = [n for n in healthy(names, results) if n in choice.names]
    # The probes' sessions of the hosts left out end now; the mesh agents take the others'.
    ssh.release(keep=ready if len(ready) > 1 else ())
    with phases.phase("mesh"):  # TCP, MTU and loss: one run of the agents
        first_choice = choice
        choice, mesh_results = verified_mesh(ssh, choice, ready, options, say)
    if choice is not first_choice:
        recheck_interface(choice, facts, results)
    sampled = sampling(len(ready), options.seed or 0) if len(ready) > 1 else {}
    for name in names:
        results[name] += mesh_results.get(name) or [
            skipped(check_id, "not run: failed earlier checks") for check_id in MESH_IDS]
    ready = [n for n in healthy(names, results) if n in choice.names]
    with phases.phase("mpi"):
        mpi_results, matrices = run_mpi_step(choice, ready, slots, options, say,
                                             ssh.reuse_args())
    if "mpi" in phases.rows:  # the last MPI run's split, by the probe's clock
        phases.rows["mpi"].update({k: matrices[k] for k in MPI_SPLIT if k in matrices})
    for name in names:
        results[name] += mpi_results.get(name) or [
            skipped(mpi.ALLREDUCE, "not run: failed earlier checks")]
    if options.deep:
        ready = [n for n in healthy(names, results) if n in choice.names]
        deep_results = run_deep_step(choice, ready, options, say)
        for name in names:
            results[name] += deep_results.get(name) or [
                skipped(mpi.HOROVOD, "not run: failed earlier checks")]
    return choice, matrices, sampled


def verified_mesh(ssh: Ssh, choice: InterfaceChoice, ready: list[str], options: Options,
                  say: Say) -> tuple[InterfaceChoice, dict[str, list[CheckResult]]]:
    """The mesh on the chosen network. Where it fails most of the hosts there, the network
    may be what failed rather than the hosts: the next raced network they all share is tried
    and kept where it fails fewer (then those hosts were sound and the first network was
    not); else the first network's verdicts stand."""
    found = run_mesh_step(ssh, choice, ready, options, say)
    for other in choice.runners_up:
        if len(failing(found)) * 2 <= len(found) or not set(ready) <= set(other.names):
            break
        why = f"the mesh failed {len(failing(found))} of {len(found)} hosts ({what_failed(found)})"
        say(f"on {choice.interface} {why}; trying {other.interface} {other.cidr}")
        again = run_mesh_step(ssh, other, ready, options, say)
        if len(failing(again)) < len(failing(found)):
            return fall_back(choice, other, why), again
    return choice, found


def failing(found: Mapping[str, list[CheckResult]]) -> list[str]:
    return [name for name, checks in found.items()
            if any(c.status is Status.FAIL for c in checks)]


def what_failed(found: Mapping[str, list[CheckResult]]) -> str:
    """'h1 loss.path, h2 loss.path mtu.path': the hosts and the checks they failed."""
    return ", ".join(f"{name} {' '.join(c.id for c in checks if c.status is Status.FAIL)}"
                     for name, checks in found.items() if name in failing(found))


def recheck_interface(choice: InterfaceChoice, facts: Mapping[str, Facts],
                      results: dict[str, list[CheckResult]]) -> None:
    """interface.choice and interface.public again where the network changed after the host
    checks (verified_mesh), in their places."""
    for name, found in results.items():
        if name in facts:
            fresh = {c.id: c for c in interface_check.check_choice(name, choice, facts[name])}
            results[name] = [fresh.get(c.id, c) for c in found]


def run_deep_step(choice: InterfaceChoice, ready: list[str], options: Options, say: Say
                  ) -> dict[str, list[CheckResult]]:
    if not ready:
        return {}
    try:  # the value make train will give horovodrun
        interfaces = network_interfaces({"interface": choice.interface,
                                         "interface_cidr": choice.cidr}, options.elastic)
    except UserError as exc:
        return {n: [skipped(mpi.HOROVOD, f"not run: {exc}")] for n in ready}
    say(f"Horovod allreduce through horovodrun over {len(ready)} host(s) (--deep)")
    try:
        return deep.run_deep(ready, interfaces, options.python, options.elastic,
                             timeout_s=max(DEEP_MIN_S, 9 * options.timeout_s))
    except Exception as exc:
        return crashed(ready, mpi.HOROVOD, exc)


def run_mesh_step(ssh: Ssh, choice: InterfaceChoice, ready: list[str], options: Options,
                  say: Say) -> dict[str, list[CheckResult]]:
    if len(ready) < 2:
        why = "one host: nothing to test between hosts" if ready else "no healthy host"
        return {n: [skipped(check_id, why) for check_id in MESH_IDS] for n in ready}
    say(f"mesh and MTU test between {len(ready)} hosts on {choice.interface}")
    hosts = [mesh.MeshHost(n, choice.addresses[n], choice.names[n], choice.mtus[n])
             for n in ready]
    try:
        found = mesh_runner.run_mesh(ssh, hosts, python_for=lambda _host: options.python,
                              timeout_s=options.timeout_s, seed=options.seed or 0)
    except Exception as exc:  # a bug in a test must not pass for a healthy network
        return crashed(ready, mesh.CHECK_ID, exc)
    return {n: list(found.get(n) or [skipped(mesh.CHECK_ID, "no result")]) for n in ready}


def run_mpi_step(choice: InterfaceChoice, ready: list[str], slots: Mapping[str, int],
                 options: Options, say: Say, ssh_args: list[str]
                 ) -> tuple[dict[str, list[CheckResult]], dict]:
    if not options.mpi:
        return {n: [skipped(mpi.ALLREDUCE, "skipped: --no-mpi")] for n in ready}, {}
    if not ready:
        return {}, {}
    say(f"MPI allreduce over {len(ready)} host(s)")
    hosts = [mpi.MpiHost(n, choice.addresses[n], slots[n]) for n in ready]
    try:
        found, matrices = mpi_runner.run_mpi(hosts, choice.interface or "", choice.cidr or "",
                                      options.python, bandwidth=options.bandwidth,
                                      timeout_s=max(30.0, 3 * options.timeout_s),
                                      ssh_args=ssh_args, alone_s=options.timeout_s,
                                      seed=options.seed or 0)
    except Exception as exc:
        return crashed(ready, mpi.ALLREDUCE, exc), {}
    return {n: list(found.get(n) or [skipped(mpi.ALLREDUCE, "no result")])
            for n in ready}, dict(matrices or {})


def crashed(hosts: list[str], check_id: str, exc: Exception) -> dict[str, list[CheckResult]]:
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    result = failed(check_id, f"the test itself crashed: {type(exc).__name__}: {exc}",
                    "a preflight bug: see the traceback above and report it")
    return {n: [result] for n in hosts}


def first_address(host: str, facts: Mapping[str, Facts]) -> str | None:
    found = sorted(resolve.resolved_addresses(host, facts))
    return found[0] if found else None


def candidates(facts: Mapping[str, Facts], names: list[str]) -> tuple[dict, ...]:
    """Neighbour-table entries (--neighbours) that are not inventory hosts: hosts to consider."""
    known = {str(a.ip) for f in facts.values() for i in f.interfaces for a in (*i.ipv4, *i.ipv6)}
    known |= {a for n in names for a in resolve.resolved_addresses(n, facts)}
    seen: dict[str, dict] = {}
    for host, f in facts.items():
        for n in f.neighbours or ():
            if n.address in known or "FAILED" in n.state or "INCOMPLETE" in n.state:
                continue
            entry = seen.setdefault(n.address, {"address": n.address, "mac": n.mac,
                                                "seen_from": []})
            entry["seen_from"].append(f"{host} {n.dev}")
    return tuple(seen.values())
