#!/usr/bin/env bash
# horovodrun's --host-discovery-script for make train ELASTIC=1: horovodrun needs a program to
# run, the discovery itself is Python (scripts/preflight/discover.py, which documents it). VENV
# as in make; a relative one is the repository's.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${VENV:-$ROOT/.venv}/bin/python
[[ $PY == /* ]] || PY=$ROOT/$PY
exec "$PY" -m preflight.discover "$@"
