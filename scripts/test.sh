#!/usr/bin/env bash
# The README's test command: set up, start the daemons tests can't start themselves, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# dockerd for the arm64 container tests (vfs storage and no iptables work in containers/VMs).
if command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  mkdir -p .cache
  (dockerd --storage-driver=vfs --iptables=false --bridge=none >.cache/dockerd.log 2>&1 &)
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

# Two workers (pytest-xdist): alone the suite keeps one of two cores busy (its QEMU runs, agents, brokers
# and fleets wait on each other). A file's tests stay together in one worker (tests/conftest.py);
# EDGEFLEET_TEST_WORKERS=0 runs them in this process.
exec .venv/bin/python -m pytest -n "${EDGEFLEET_TEST_WORKERS:-2}" --dist loadgroup "$@"
