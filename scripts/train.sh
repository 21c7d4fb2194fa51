#!/usr/bin/env bash
# `make train`: preflight the hosts (unless the report already vouches for the hostfile), then
# launch template/train.py with horovodrun on the healthy hosts, over the interface the preflight
# chose, with one process per slot.
#
# Variables (all optional): HOSTFILE (train on this hostfile), HOSTS / INVENTORY (what to
# preflight), NP (process count), REPORT (default preflight.json), and the training values
# EPOCHS BATCH_SIZE LR WARMUP OUT SEED RESUME, passed to template/train.py.
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

main() {
  [ -x "$PY" ] || die "no venv at ${PY%/bin/python}: run make setup"
  TRAIN_ARGS=()
  training_args
  choose_hostfile
  local settings np iface
  settings=$("$PY" -m preflight.launch settings --report "$REPORT" --hostfile "$LAUNCH_HOSTFILE" ${NP:+--np "$NP"}) || exit 2
  read -r np iface <<<"$settings"
  # Open MPI refuses root unless told; the simulated cluster and CI run as root.
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}  # TensorFlow's start-up notes, once per rank
  if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
  local cmd=("${VENV:-$ROOT/.venv}/bin/horovodrun" -np "$np" --hostfile "$LAUNCH_HOSTFILE"
             --network-interfaces "$iface" "$PY" "$ROOT/template/train.py" "${TRAIN_ARGS[@]}")
  echo "make train: ${cmd[*]}" >&2
  # Keep a copy of the output: when a rank dies, mpirun's words say which; we say it in one line.
  local log rc=0
  log=$(mktemp /tmp/train-XXXXXX.log)
  "${cmd[@]}" 2>&1 | tee "$log" || rc=$?
  if [ "$rc" != 0 ]; then
    "$PY" -m preflight.launch explain --log "$log" --hostfile "$LAUNCH_HOSTFILE"
    rm -f "$log"
    exit "$rc"
  fi
  rm -f "$log"
}

main "$@"
