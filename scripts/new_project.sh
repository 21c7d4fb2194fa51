#!/usr/bin/env bash
# `make new-project DEST=../my-project`: a new project from this one, with its own README,
# Makefile, scripts, template and tests, in which `make train` and `make test` work as here.
# It takes the files git tracks, less what only this repository needs (benchmarks and their
# test, the test of this very command), and starts a git repository of its own.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-}
die() { printf 'make new-project: %s\n' "$*" >&2; exit 2; }

[ -n "$DEST" ] || die "say where: make new-project DEST=../my-project"
[ -e "$DEST" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ] && die "$DEST exists and is not empty: pick a new folder"
NAME=$(basename "$(realpath -m "$DEST")")
[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "'$NAME' is not a usable project name: use letters, digits, '.', '_' and '-'"

# What a new project does not need: this repository's benchmarks and history, its 100-host
# scale test (built on the benchmarks), and the test of this command with its regression example.
EXCLUDE='^(bench/|tests/regression_example/|tests/scale/|tests/test_(new_project|bench)\.py$)'

mkdir -p "$DEST"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
  grep -zvE "$EXCLUDE" |
  while IFS= read -r -d '' path; do
    [ -f "$ROOT/$path" ] || continue  # deleted in the working tree, or a link to a folder (.venv)
    mkdir -p "$DEST/$(dirname "$path")"
    cp -p "$ROOT/$path" "$DEST/$path"
  done

# Its own name in the README title and the package metadata; no bench target.
sed -i "1s/.*/# $NAME/" "$DEST/README.md"
sed -i "0,/^name = .*/s//name = \"$NAME\"/" "$DEST/pyproject.toml"
sed -i -e '/^bench:/,/^$/d' -e '/^test-scale:/,/^$/d' -e 's/ bench / /' -e 's/ test-scale / /' \
  -e 's| $(wildcard bench/results)||' -e '/^| `make bench`/d' -e '/^| `make test-scale`/d' \
  "$DEST/Makefile" "$DEST/README.md"
sed -i '/^bench\//d' "$DEST/.gitignore"
sed -i '/^## Benchmarks/,/^## /{/^## Benchmarks/d;/^## /!d}' "$DEST/README.md"

git -C "$DEST" init -q
git -C "$DEST" add -A
echo "make new-project: $DEST ready ($(git -C "$DEST" ls-files | wc -l) files); next: cd $DEST && make train"
