#!/usr/bin/env bash
# `make train`: preflight the hosts (unless the report already vouches for the hostfile), then
# launch template/train.py with horovodrun on the healthy hosts, over the interface the preflight
# chose, with one process per slot.
#
# Variables (all optional): HOSTFILE (train on this hostfile), HOSTS / INVENTORY (what to
# preflight), NP (process count), REPORT (default preflight.json), and the training values
# EPOCHS BATCH_SIZE LR WARMUP OUT SEED RESUME, passed to template/train.py.
#
# ELASTIC=1 runs horovodrun's elastic mode over Gloo: scripts/discover_hosts.sh preflights the
# same inventory (at most every DISCOVER_EVERY=5 s), a host that fails drops out and the others
# go on from the last committed state, a host that passes again joins after a cool-down. MIN_NP (default 1): fewer processes
# than this and the job waits for hosts (HOROVOD_ELASTIC_TIMEOUT, default 600 s) and then
# fails; MAX_NP: never more than this. HOROVOD_GLOO_TIMEOUT_SECONDS (default 30) is how long the
# others wait on a host that stopped answering before they drop it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${VENV:-$ROOT/.venv}/bin/python
REPORT=${REPORT:-preflight.json}
PREFLIGHT_HOSTFILE=${PREFLIGHT_HOSTFILE:-hostfile}  # where the preflight writes the healthy hosts

die() { printf 'make train: %s\n' "$*" >&2; exit 2; }

has_host_lines() { grep -qvE '^[[:space:]]*(#|$)' "$1"; }

# Which hostfile to launch on; runs the preflight where the report does not vouch for one.
choose_hostfile() {
  if [ -n "${HOSTFILE:-}" ]; then
    [ -f "$HOSTFILE" ] || die "HOSTFILE=$HOSTFILE does not exist: give an existing hostfile, or leave HOSTFILE out and the preflight writes one"
    has_host_lines "$HOSTFILE" || die "HOSTFILE=$HOSTFILE lists no hosts: add 'host slots=N' lines (see hostfile.example)"
    if "$PY" -m preflight.launch vouches --report "$REPORT" --hostfile "$HOSTFILE"; then
      echo "make train: $REPORT vouches for $HOSTFILE; launching without a new preflight" >&2
      LAUNCH_HOSTFILE=$HOSTFILE
      return
    fi
    # A hostfile from elsewhere is checked as the inventory; the healthy hosts go to a new file,
    # so the user's own file is never rewritten.
    [ "$(realpath "$HOSTFILE")" = "$(realpath -m "$PREFLIGHT_HOSTFILE")" ] && PREFLIGHT_HOSTFILE=hostfile.healthy
    echo "make train: checking $HOSTFILE with the preflight first" >&2
    run_preflight --inventory "$HOSTFILE"
  else
    local inventory=()
    [ -n "${HOSTS:-}" ] && inventory=(--hosts "$HOSTS")
    [ -n "${INVENTORY:-}" ] && inventory=(--inventory "$INVENTORY")
    run_preflight "${inventory[@]}"
  fi
  LAUNCH_HOSTFILE=$PREFLIGHT_HOSTFILE
}

run_preflight() {
  local rc=0
  "$PY" -m preflight "$@" --hostfile "$PREFLIGHT_HOSTFILE" --report "$REPORT" || rc=$?
  case $rc in
    0) ;;
    1) [ -f "$PREFLIGHT_HOSTFILE" ] && has_host_lines "$PREFLIGHT_HOSTFILE" ||
         die "no host passed the preflight: fix the failures above, then make train again"
       echo "make train: some hosts failed the preflight (above); training on the healthy ones" >&2 ;;
    *) exit "$rc" ;;
  esac
}

training_args() {  # make's variables -> template/train.py flags
  local pair name value
  for pair in EPOCHS:epochs BATCH_SIZE:batch-size LR:lr WARMUP:warmup OUT:out SEED:seed RESUME:resume; do
    name=${pair%%:*}
    value=${!name:-}
    [ -n "$value" ] && TRAIN_ARGS+=("--${pair#*:}" "$value")
  done
  if [ -n "${RESUME:-}" ] && [ ! -d "$RESUME/checkpoints" ]; then
    die "RESUME=$RESUME has no checkpoints/ folder: give a run directory such as runs/20260101-120000"
  fi
  return 0
}

# ELASTIC=1: check the values before any preflight runs; MIN_NP <= NP once NP is known.
elastic_values() {
  case ${ELASTIC:-0} in
    0) [ -z "${MIN_NP:-}${MAX_NP:-}" ] || die "MIN_NP and MAX_NP are for elastic runs: add ELASTIC=1, or leave them out"
       return ;;
    1) ;;
    *) die "ELASTIC=$ELASTIC: use ELASTIC=1 for an elastic run, or leave ELASTIC out" ;;
  esac
  local name
  for name in MIN_NP MAX_NP; do
    [ -z "${!name:-}" ] || [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name=${!name} must be a whole number of at least 1"
  done
  TRAIN_ARGS+=(--elastic)
}

# horovodrun's elastic options; the discovery script preflights the inventory this job started
# from, so a host that was out at the start can join once it passes.
elastic_launch_args() {
  local np=$1 min=${MIN_NP:-1}
  [ "$min" -le "$np" ] || die "MIN_NP=$min is more than the $np processes the preflight found: lower MIN_NP, or add hosts and make train again"
  [ -z "${MAX_NP:-}" ] || [ "$MAX_NP" -ge "$np" ] || die "MAX_NP=$MAX_NP is less than NP=$np: raise MAX_NP or set NP=$MAX_NP"
  unset DISCOVER_HOSTS DISCOVER_INVENTORY
  if [ -n "${HOSTFILE:-}" ]; then export DISCOVER_INVENTORY; DISCOVER_INVENTORY=$(realpath "$HOSTFILE")
  elif [ -n "${INVENTORY:-}" ]; then export DISCOVER_INVENTORY; DISCOVER_INVENTORY=$(realpath "$INVENTORY")
  elif [ -n "${HOSTS:-}" ]; then export DISCOVER_HOSTS=$HOSTS
  fi
  # horovodrun runs the script through a shell, on this machine, from this directory.
  # A host whose processes failed is shut out for 30 s at first, longer each time it fails
  # again (at most 300 s); without a range horovodrun shuts it out for good.
  LAUNCH_ARGS=(--gloo --min-np "$min" ${MAX_NP:+--max-np "$MAX_NP"}
               --blacklist-cooldown-range 30 300
               --host-discovery-script "$(printf '%q' "$ROOT/scripts/discover_hosts.sh")")
  ssh_with_keepalive
  export DISCOVER_STATE=$SCRATCH/discovered  # lets the script say once why a host dropped
}

# The elastic driver counts a host out only when its ssh session to the host ends, and ssh waits
# on a dead link for ever unless it sends keepalives. horovodrun takes no ssh options, so it
# finds this ssh first on PATH: three keepalives SSH_KEEPALIVE (default 5) seconds apart unanswered
# and the session ends, the host's process counts as failed and the others go on without it.
ssh_with_keepalive() {
  local real
  real=$(command -v ssh) || die "no ssh client: install openssh-client (see make setup)"
  mkdir "$SCRATCH/bin"
  printf '#!/bin/sh\nexec %q -o ServerAliveInterval=%s -o ServerAliveCountMax=3 "$@"\n' \
    "$real" "${SSH_KEEPALIVE:-5}" >"$SCRATCH/bin/ssh"
  chmod +x "$SCRATCH/bin/ssh"
  export PATH="$SCRATCH/bin:$PATH"
}

# One line on why an elastic job failed: its driver names the first failed process 'host[slot]'.
explain_elastic() {
  local log=$1 text run ckpts=()
  if grep -q 'enough resources to run at least' "$log"; then  # horovodrun's elastic timeout
    text="fewer than MIN_NP=${MIN_NP:-1} slots passed the preflight within HOROVOD_ELASTIC_TIMEOUT (default 600 s): run make preflight to see why"
  elif text=$(sed -n 's/^Process name: *\([^ []*\)\[\([0-9]*\)\].*/the process in slot \2 on \1/p' "$log" | head -n1) && [ -n "$text" ]; then
    text+=" exited with code $(sed -n 's/^Exit code: *\([0-9]*\).*/\1/p' "$log" | head -n1)"
  else
    text="the job failed before naming a process; see the output above"
  fi
  run=$(sed -n 's/.*run directory \([^ []*\).*/\1/p' "$log" | head -n1)
  [ -z "$run" ] || ckpts=("$run"/checkpoints/epoch-*.h5)  # sorted: the last is the newest
  if [ "${#ckpts[@]}" -gt 0 ] && [ -f "${ckpts[-1]}" ]; then
    text+="; last checkpoint ${ckpts[-1]}; continue with: make train ELASTIC=1 RESUME=$run"
  fi
  echo "make train: $text" >&2
}

main() {
  [ -x "$PY" ] || die "no venv at ${PY%/bin/python}: run make setup"
  SCRATCH=$(mktemp -d /tmp/train-XXXXXX)  # this job's files outside the repository
  trap 'rm -rf "$SCRATCH"' EXIT
  TRAIN_ARGS=()
  training_args
  elastic_values
  choose_hostfile
  local settings np iface
  local gloo=()
  [ "${ELASTIC:-0}" = 0 ] || gloo=(--gloo)
  settings=$("$PY" -m preflight.launch settings --report "$REPORT" --hostfile "$LAUNCH_HOSTFILE" ${NP:+--np "$NP"} "${gloo[@]}") || exit 2
  read -r np iface <<<"$settings"
  LAUNCH_ARGS=(--hostfile "$LAUNCH_HOSTFILE")
  [ "${ELASTIC:-0}" = 0 ] || elastic_launch_args "$np"
  # Open MPI refuses root unless told; the simulated cluster and CI run as root.
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}  # TensorFlow's start-up notes, once per rank
  if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
  local cmd=("${VENV:-$ROOT/.venv}/bin/horovodrun" -np "$np" "${LAUNCH_ARGS[@]}"
             --network-interfaces "$iface" "$PY" "$ROOT/template/train.py" "${TRAIN_ARGS[@]}")
  echo "make train: ${cmd[*]}" >&2
  # Keep a copy of the output: when a rank dies, mpirun's words say which; we say it in one line.
  local log=$SCRATCH/train.log rc=0
  "${cmd[@]}" 2>&1 | tee "$log" || rc=$?
  if [ "$rc" != 0 ]; then
    if [ "${ELASTIC:-0}" = 0 ]; then
      "$PY" -m preflight.launch explain --log "$log" --hostfile "$LAUNCH_HOSTFILE"
    else
      explain_elastic "$log"
    fi
    exit "$rc"
  fi
}

main "$@"
