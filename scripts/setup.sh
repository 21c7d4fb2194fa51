#!/usr/bin/env bash
# Installs everything `make train` and `make test` need, and does nothing when it is already done:
# system packages (apt-get), a venv, the pinned stack, Horovod built from source, and a check that
# Horovod was built with TensorFlow, MPI and Gloo.
#
# Two stacks. The default: TensorFlow 2.21 with tf_keras (Keras 2), Python 3.10-3.13, Horovod
# 0.28.1 built from its PyPI source with scripts/horovod-0.28.1.patch applied (the wheel cached
# under ~/.cache/horovod-patched). TF=2.15: the old, unpatched stack (TensorFlow 2.15.1,
# Python 3.9-3.11), for who needs it.
#
# Variables: VENV (default .venv), PYTHON (interpreter to build the venv from), TF (2.21 or
# 2.15), GPU=1 (CUDA TensorFlow), FORCE=1 (reinstall even if the stamp says it is done).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
GPU=${GPU:-0}
FORCE=${FORCE:-0}
TF=${TF:-2.21}
VARIANT=cpu
[ "$GPU" = 1 ] && VARIANT=gpu
HOROVOD_PATCH=$ROOT/scripts/horovod-0.28.1.patch
case $TF in
  2.21) PINS=requirements-$VARIANT.txt PY_MIN=10 PY_MAX=13 PY_ORDER="python3.12 python3.11 python3.13 python3.10 python3" ;;
  2.15) PINS=requirements-tf2.15-$VARIANT.txt PY_MIN=9 PY_MAX=11 PY_ORDER="python3.11 python3.10 python3.9 python3" ;;
  *) printf 'setup: error: TF=%s: use TF=2.21 (the default) or TF=2.15 (the old stack)\n' "$TF" >&2; exit 2 ;;
esac

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
  "patch:patch"
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
python_ok() {  # $1: interpreter; true if TensorFlow $TF has wheels for it
  "$1" -c "import sys; sys.exit(0 if (3, $PY_MIN) <= sys.version_info[:2] <= (3, $PY_MAX) else 1)" 2>/dev/null
}

pick_python() {
  local cand
  # The venv's own Python while it suits the stack: make train after make setup PYTHON=... must
  # not rebuild the venv with another one.
  if [ -z "${PYTHON:-}" ] && [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"; then
    "$VENV/bin/python" -c 'import sys; print(sys._base_executable)'; return
  fi
  if [ -n "${PYTHON:-}" ]; then
    command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON not found"
    python_ok "$PYTHON" || die "PYTHON=$PYTHON is $("$PYTHON" -V 2>&1); TensorFlow $TF has wheels for Python 3.$PY_MIN-3.$PY_MAX only"
    echo "$PYTHON"; return
  fi
  for cand in $PY_ORDER; do
    if command -v "$cand" >/dev/null 2>&1 && python_ok "$cand"; then echo "$cand"; return; fi
  done
  die "no Python 3.$PY_MIN-3.$PY_MAX found ($(python3 -V 2>&1 || echo 'no python3')): TensorFlow $TF has wheels for those only. Install one (e.g. with pyenv) and run: make setup PYTHON=python3.12"
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
stamp_of() {  # what the venv must match: the pins, this script, the patch, the package, the stack
  cat "$ROOT"/requirements*.txt "$ROOT/scripts/setup.sh" "$HOROVOD_PATCH" "$ROOT/pyproject.toml" |
    sha256sum | cut -c1-16
  echo "tf=$TF variant=$VARIANT python=$1"
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

check_patched() {  # the default stack needs the patched Horovod, built against this TensorFlow
  "$VENV/bin/python" - <<'PY' || die "Horovod in $VENV is not the patched build for this TensorFlow (see above); rebuild: make setup FORCE=1"
import json, os, pathlib, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import horovod
import tensorflow as tf
root = pathlib.Path(horovod.__file__).parent
if "local patch:" not in (root / "tensorflow" / "keras" / "__init__.py").read_text():
    sys.exit("horovod/tensorflow/keras is unpatched: its callbacks fail on Keras 3")
built = json.loads((root / "metadata.json").read_text()).get("tensorflow")
if built != tf.__version__:
    sys.exit(f"Horovod was built against TensorFlow {built}, the venv has {tf.__version__}")
print(f"setup: Horovod: the patched build, against TensorFlow {built}")
PY
}

horovod_env() {  # how Horovod is built: TensorFlow, MPI and Gloo; NCCL where GPU=1 has it
  echo HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 \
    HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j"$(nproc)"
  if [ "$VARIANT" = gpu ] && [ -n "${HOROVOD_NCCL_HOME:-}" ]; then echo HOROVOD_GPU_OPERATIONS=NCCL; fi
}

patched_wheel_dir() {  # the cache folder for this stack's patched wheel, keyed by what it is built from
  local key
  key=$({ cat "$HOROVOD_PATCH" "$ROOT/requirements-horovod.txt"; "$VENV/bin/python" -V
          "$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^tensorflow([-_]cpu)?=='
          horovod_env; } 2>&1 | sha256sum | cut -c1-16)
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/horovod-patched/horovod-$key"
}

build_patched_horovod() {  # $1: the folder the wheel goes to
  local work pin src
  work=$(mktemp -d /tmp/horovod-build-XXXXXX)
  pin=$(grep -E '^horovod==' "$ROOT/requirements-horovod.txt")
  "$VENV/bin/python" -m pip download -q --no-binary :all: --no-deps --no-build-isolation -d "$work" "$pin" >>/tmp/setup-pip.log 2>&1 ||
    { rm -rf "$work"; die "could not download the $pin source; see /tmp/setup-pip.log"; }
  tar xzf "$work"/horovod-*.tar.gz -C "$work"
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'horovod-*')
  patch -d "$src" -p1 --forward --quiet <"$HOROVOD_PATCH" >>/tmp/setup-pip.log 2>&1 ||
    { rm -rf "$work"; die "scripts/horovod-0.28.1.patch does not apply to $pin; see /tmp/setup-pip.log"; }
  # shellcheck disable=SC2046
  env $(horovod_env) "$VENV/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$1" "$src" >>/tmp/setup-pip.log 2>&1 ||
    { rm -rf "$work" "$1"; tail -30 /tmp/setup-pip.log >&2; die "Horovod build failed; see /tmp/setup-pip.log"; }
  rm -rf "$work"
}

install_horovod() {
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if [ "$TF" = 2.15 ]; then  # the old stack: Horovod as released, pip caches the wheel
    say "building Horovod 0.28.1 against TensorFlow and Open MPI (about 5 minutes on 2 cores the first time; pip caches the wheel)"
    # shellcheck disable=SC2046
    env $(horovod_env) "${pip[@]}" --no-build-isolation -r "$ROOT/requirements-horovod.txt" >>/tmp/setup-pip.log 2>&1 ||
      { tail -30 /tmp/setup-pip.log >&2; die "Horovod build failed; see /tmp/setup-pip.log"; }
    return
  fi
  local wheels
  wheels=$(patched_wheel_dir)
  if ! ls "$wheels"/horovod-*.whl >/dev/null 2>&1; then
    say "building Horovod 0.28.1 from source with scripts/horovod-0.28.1.patch against TensorFlow $TF and Open MPI (about 2-5 minutes on 2 cores the first time; the wheel is kept in $wheels)"
    build_patched_horovod "$wheels"
  fi
  "${pip[@]}" --force-reinstall --no-deps "$wheels"/horovod-*.whl >>/tmp/setup-pip.log 2>&1 &&
    "${pip[@]}" "$wheels"/horovod-*.whl >>/tmp/setup-pip.log 2>&1 ||
    { tail -20 /tmp/setup-pip.log >&2; die "installing the Horovod wheel failed; see /tmp/setup-pip.log"; }
}

install_venv() {
  local py=$1 stack="tf=$TF variant=$VARIANT python=$("$py" -V 2>&1)"
  # Another stack or Python: a new venv (pip would keep a Horovod built for the other one).
  if [ -d "$VENV" ] && [ "$(cat "$VENV/.setup-stack" 2>/dev/null)" != "$stack" ]; then rm -rf "$VENV"; fi
  [ -x "$VENV/bin/python" ] || { say "creating $VENV with $("$py" -V 2>&1)"; "$py" -m venv "$VENV"; }
  echo "$stack" >"$VENV/.setup-stack"
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  say "installing the pinned stack ($PINS)"
  "${pip[@]}" -r "$ROOT/$PINS" -r "$ROOT/requirements-dev.txt" >/tmp/setup-pip.log 2>&1 ||
    { tail -20 /tmp/setup-pip.log >&2; die "pip install failed; see /tmp/setup-pip.log"; }
  if [ "$TF" != 2.15 ]; then
    # tf_keras names the full tensorflow package (572 MB more) as its dependency; tensorflow-cpu
    # provides the same modules.
    "${pip[@]}" --no-deps -r "$ROOT/requirements-tf_keras.txt" >>/tmp/setup-pip.log 2>&1 ||
      { tail -20 /tmp/setup-pip.log >&2; die "pip install tf_keras failed; see /tmp/setup-pip.log"; }
  fi
  install_horovod
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
    say "nothing to do: $VENV is up to date (TensorFlow $TF, $VARIANT, $("$VENV/bin/python" -V 2>&1))"
    return
  fi
  rm -f "$VENV/.setup-stamp"
  install_venv "$py"
  check_build
  [ "$TF" = 2.15 ] || check_patched
  echo "$want" >"$VENV/.setup-stamp"
  say "done: $VENV (TensorFlow $TF, $VARIANT, $("$VENV/bin/python" -V 2>&1))"
}

main "$@"
