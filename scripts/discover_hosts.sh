#!/usr/bin/env bash
# Host discovery for horovodrun's elastic mode (make train ELASTIC=1): preflight the job's
# inventory and print each healthy host as a 'host:slots' line, the format
# --host-discovery-script expects. horovodrun runs this on the launcher about once a second; a
# host missing from the output is dropped from the job, a host that reappears joins it.
#
# Environment (scripts/train.sh sets them): DISCOVER_HOSTS ('h1:2,h2:2') or DISCOVER_INVENTORY
# (a hostfile) name the inventory, neither: this machine; DISCOVER_TIMEOUT (seconds per step
# and host, default 5) bounds how long a dead host holds up one round; DISCOVER_STATE (a file
# for the last list, so that a change is reported once); DISCOVER_EVERY (seconds, default 5):
# within this time of the last round the last list is the answer; VENV as in make.
#
# Stdout carries the host lines and nothing else (the preflight's words go to stderr). Exit 0
# also when some or all hosts are out: horovodrun takes a failing script for a broken job. Exit
# 2 for bad input, which horovodrun reports at once when it is the first round; 3 when the
# preflight failed and there is no earlier answer to give.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${VENV:-$ROOT/.venv}/bin/python
[[ $PY == /* ]] || PY=$ROOT/$PY  # VENV=.venv from make is relative to the repository

inventory=()
if [ -n "${DISCOVER_INVENTORY:-}" ]; then
  inventory=(--inventory "$DISCOVER_INVENTORY")
elif [ -n "${DISCOVER_HOSTS:-}" ]; then
  inventory=(--hosts "$DISCOVER_HOSTS")
fi

# horovodrun asks about once a second, and a round (ssh to every host, a probe on each) takes a
# good part of a core from the training on this host; a host that dies mid-run is dropped by
# horovodrun itself (its processes fail), so a list a few seconds old does no harm.
if [ -n "${DISCOVER_STATE:-}" ] && [ -f "$DISCOVER_STATE" ] &&
   [ $(($(date +%s) - $(stat -c %Y "$DISCOVER_STATE"))) -lt "${DISCOVER_EVERY:-5}" ]; then
  cat "$DISCOVER_STATE"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/discover-XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT

# No MPI test: it is the slowest step, and Gloo, not MPI, carries an elastic job. The summary is
# kept back: horovodrun passes stderr through, and a line a second would bury the training's.
rc=0
"$PY" -m preflight "${inventory[@]}" --no-mpi --quiet --timeout "${DISCOVER_TIMEOUT:-5}" \
  --hostfile "$work/hostfile" --report "$work/report.json" >"$work/log" 2>&1 || rc=$?
# 0 all healthy, 1 some out (no hostfile if none is healthy); anything else, or no report, and
# the round says nothing about the hosts: the last answer stands (bad input excepted), rather
# than an empty list that would make horovodrun stop every process.
if [ "$rc" -gt 1 ] || [ ! -f "$work/report.json" ]; then
  cat "$work/log" >&2
  if [ "$rc" != 2 ] && [ -n "${DISCOVER_STATE:-}" ] && [ -f "$DISCOVER_STATE" ]; then
    cat "$DISCOVER_STATE"
    exit 0
  fi
  exit $((rc > 1 ? rc : 3))
fi

# 'host slots=N' -> 'host:N'
: >"$work/hosts"
[ ! -f "$work/hostfile" ] || awk '{sub(/#.*/, "")} NF {
  slots = 1
  for (i = 2; i <= NF; i++) if ($i ~ /^slots=[0-9]+$/) slots = substr($i, 7)
  print $1 ":" slots
}' "$work/hostfile" >"$work/hosts"
cat "$work/hosts"

# When the list changes (DISCOVER_STATE keeps the last one), say on stderr which hosts are out
# and the first check each failed: the job's output then shows why a host dropped.
if [ -n "${DISCOVER_STATE:-}" ] && ! cmp -s "$work/hosts" "$DISCOVER_STATE"; then
  "$PY" - "$work/report.json" >&2 <<'EOF' || true
import json, sys
for host in json.load(open(sys.argv[1])).get("hosts", []):
    failed = [c for c in host.get("checks", []) if c.get("status") == "fail"]
    if not host.get("ok") and failed:
        print(f"discover_hosts: {host['host']} is out: {failed[0]['id']}: {failed[0]['detail']}")
EOF
fi
[ -z "${DISCOVER_STATE:-}" ] || cp "$work/hosts" "$DISCOVER_STATE"  # its time: the last round
exit 0
