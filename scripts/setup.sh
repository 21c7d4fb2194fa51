#!/usr/bin/env bash
# Installs everything `make train` and `make test` need, and does nothing when it is already done:
# system packages (apt-get), a Python 3.9-3.11 venv, the pinned stack, Horovod built from source,
# and a check that Horovod was built with TensorFlow, MPI and Gloo.
#
# Variables: VENV (default .venv), PYTHON (interpreter to build the venv from), GPU=1 (CUDA
# TensorFlow), FORCE=1 (reinstall even if the stamp says it is done).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
GPU=${GPU:-0}
FORCE=${FORCE:-0}
VARIANT=cpu
[ "$GPU" = 1 ] && VARIANT=gpu

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# --- system packages ----------------------------------------------------------------------------
# command or file that proves a package is there -> Debian package that provides it
SYSTEM_NEEDS=(
  "mpirun:openmpi-bin"
  "/usr/include/x86_64-linux-gnu/mpi/mpi.h|/usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h|/usr/include/mpi.h|/usr/include/openmpi/mpi.h|/usr/lib/aarch64-linux-gnu/openmpi/include/mpi.h:libopenmpi-dev"
  "ssh:openssh-client"
  "/usr/sbin/sshd:openssh-server"
  "cmake:cmake"
  "g++:g++"
  "make:make"
  "ip:iproute2"
  "iptables:iptables"
  "ping:iputils-ping"
  "unshare:util-linux"
)

present() {  # $1: 'cmd' or 'path|path|...'
  local alt
  IFS='|' read -ra alts <<<"$1"
  for alt in "${alts[@]}"; do
    if [[ $alt == /* ]]; then [ -e "$alt" ] && return 0
    else command -v "$alt" >/dev/null 2>&1 && return 0; fi
  done
  return 1
}

as_root() {  # runs "$@" as root, directly or through passwordless sudo
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 127; fi
}

apt_install() {  # $@: Debian packages
  command -v apt-get >/dev/null 2>&1 ||
    die "missing system packages: $* (no apt-get here: install them with your package manager)"
  say "installing system packages: $*"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/tmp/setup-apt.log 2>&1; then
    if [ $? = 127 ]; then
      die "need root for system packages; run: sudo apt-get install -y $*  (then make setup again)"
    fi
    # A fresh machine has no package lists yet.
    as_root apt-get update -q >>/tmp/setup-apt.log 2>&1 || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>/tmp/setup-apt.log 2>&1 ||
      die "apt-get install $* failed; see /tmp/setup-apt.log"
  fi
}

install_system_packages() {
  local missing=() entry
  for entry in "${SYSTEM_NEEDS[@]}"; do
    present "${entry%:*}" || missing+=("${entry##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# --- Python ----------------------------------------------------------------------------------
python_ok() {  # $1: interpreter; true if it is 3.9-3.11
  "$1" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 11) else 1)' 2>/dev/null
}

pick_python() {
  local cand
  if [ -n "${PYTHON:-}" ]; then
    command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON not found"
    python_ok "$PYTHON" || die "PYTHON=$PYTHON is $("$PYTHON" -V 2>&1); need 3.9-3.11 (TensorFlow 2.15.1, the last with Keras 2 that Horovod 0.28.1 needs, has no wheels for newer Pythons)"
    echo "$PYTHON"; return
  fi
  for cand in python3.11 python3.10 python3.9 python3; do
    if command -v "$cand" >/dev/null 2>&1 && python_ok "$cand"; then echo "$cand"; return; fi
  done
  die "no Python 3.9-3.11 found ($(python3 -V 2>&1 || echo 'no python3')). TensorFlow 2.15.1, the last with Keras 2 that Horovod 0.28.1 needs, has no wheels for other versions. Install python3.11 (e.g. with pyenv) and run: make setup PYTHON=python3.11"
}

ensure_python_build_parts() {  # venv module and headers (Horovod compiles against Python.h)
  local py=$1 ver
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  local need=()
  "$py" -c 'import ensurepip, venv' 2>/dev/null || need+=("python$ver-venv")
  "$py" -c 'import os, sysconfig, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' ||
    need+=("python$ver-dev")
  if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
}

# --- the venv --------------------------------------------------------------------------------
stamp_of() {  # what the venv must match: the pins, this script, the package (entry points), variant, Python
  cat "$ROOT"/requirements*.txt "$ROOT/scripts/setup.sh" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16
  echo "variant=$VARIANT python=$1"
}

check_build() {  # Horovod must have TensorFlow, MPI and Gloo
  local out="$VENV/horovod-build.txt"
  "$VENV/bin/horovodrun" --check-build >"$out" 2>&1 || { cat "$out" >&2; die "horovodrun --check-build failed"; }
  local part
  for part in TensorFlow MPI Gloo; do
    grep -q "\[X\] $part" "$out" || { cat "$out" >&2; die "Horovod was built without $part; rebuild: make setup FORCE=1 (see /tmp/setup-pip.log)"; }
  done
  say "horovodrun --check-build: TensorFlow, MPI and Gloo present"
}

install_venv() {
  local py=$1
  [ -x "$VENV/bin/python" ] && ! python_ok "$VENV/bin/python" && rm -rf "$VENV"
  [ -x "$VENV/bin/python" ] || { say "creating $VENV with $("$py" -V 2>&1)"; "$py" -m venv "$VENV"; }
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  say "installing the pinned stack (requirements-$VARIANT.txt)"
  "${pip[@]}" -r "$ROOT/requirements-$VARIANT.txt" -r "$ROOT/requirements-dev.txt" >/tmp/setup-pip.log 2>&1 ||
    { tail -20 /tmp/setup-pip.log >&2; die "pip install failed; see /tmp/setup-pip.log"; }
  say "building Horovod 0.28.1 against TensorFlow and Open MPI (about 5 minutes on 2 cores the first time; pip caches the wheel)"
  local gpu_env=(HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1)
  [ "$VARIANT" = gpu ] && [ -n "${HOROVOD_NCCL_HOME:-}" ] && gpu_env+=(HOROVOD_GPU_OPERATIONS=NCCL)
  env HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 "${gpu_env[@]}" \
    MAKEFLAGS="-j$(nproc)" "${pip[@]}" --no-build-isolation -r "$ROOT/requirements-horovod.txt" >>/tmp/setup-pip.log 2>&1 ||
    { tail -30 /tmp/setup-pip.log >&2; die "Horovod build failed; see /tmp/setup-pip.log"; }
  # The preflight package, so that `preflight` is a command of the venv.
  "${pip[@]}" --no-build-isolation --no-deps -e "$ROOT" >>/tmp/setup-pip.log 2>&1 ||
    { tail -20 /tmp/setup-pip.log >&2; die "installing the preflight package failed"; }
}

main() {
  install_system_packages
  local py
  py=$(pick_python)
  ensure_python_build_parts "$py"
  local want
  want=$(stamp_of "$("$py" -V 2>&1)")
  if [ "$FORCE" != 1 ] && [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$want" ] &&
     [ -x "$VENV/bin/horovodrun" ]; then
    say "nothing to do: $VENV is up to date ($VARIANT, $("$VENV/bin/python" -V 2>&1))"
    return
  fi
  rm -f "$VENV/.setup-stamp"
  install_venv "$py"
  check_build
  echo "$want" >"$VENV/.setup-stamp"
  say "done: $VENV ($VARIANT, $("$VENV/bin/python" -V 2>&1))"
}

main "$@"
