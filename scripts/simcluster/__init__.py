"""A simulated multi-host cluster on one Linux machine, for testing the preflight, mpirun and
horovodrun against real ssh, real name resolution and real network faults.

Each simulated host hN is a network namespace (<prefix>-hN) with its own interfaces, addresses,
routes, iptables rules, /etc/hosts (through /etc/netns) and hostname (through a UTS namespace),
and its own sshd. The hosts are wired to one bridge in a switch namespace (<prefix>-sw); with
`up --data-net`, a second bridge there (br1) is the data network, reached through each listed
host's eth2. Nothing is added to the root namespace. Needs root.

Use it from the command line (`PYTHONPATH=scripts python3 -m simcluster --help`, or the
Makefile's cluster-* targets) or from Python:

    cluster = Cluster.from_env()            # HVSIM_PREFIX, HVSIM_DIR; or Cluster("hvx")
    cluster.up(UpOptions.parse("3", decoy_bridge="all"))
    cluster.exec("h1", "ssh", "h2", "hostname").stdout
    with cluster.fault("h2", "firewall"):   # on now, off again on the way out
        ...
    cluster.down()

Why `ip`, `iptables` and `tc` and not pyroute2 (netlink from Python): this package runs with
the system python3 before any virtual environment exists, so it may use the standard library
only, and pyroute2 is not installed there. Every operation here is a handful of one-shot calls
(create a namespace, a veth pair, an address), where a subprocess costs a few milliseconds
beside the seconds sshd needs to start, so netlink would buy no speed that matters. The
iptables and netem faults would still need the tools, and a command line that fails says in
its own words what the kernel refused, which a person can rerun by hand.

Modules: settings (names and places), options (what `up` builds), state (state.json and its
reader), system (tools, pidfiles, locks), net (namespaces, links, /etc/hosts), sshd (keys,
sshd, hostname holders), sshconfig (the ~/.ssh/config block), faults, slurm (a real Slurm on
the hosts, `up --slurm`), cluster (the `Cluster`
API), __main__ (the command line).
"""

from .cluster import FAULT_KINDS, Cluster, Fault
from .options import UpOptions
from .settings import Settings
from .state import Host, State, read_state

__all__ = ["FAULT_KINDS", "Cluster", "Fault", "Host", "Settings", "State", "UpOptions",
           "read_state"]
