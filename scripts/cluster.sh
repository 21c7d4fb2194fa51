#!/usr/bin/env bash
# The simulated cluster is the Python package scripts/simcluster (standard library only); this
# runs it with the system python3, so `scripts/cluster.sh up 3` and `--help` keep working.
py=/usr/bin/python3; [ -x "$py" ] || py=python3
PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m simcluster "$@"
