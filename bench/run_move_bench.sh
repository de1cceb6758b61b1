#!/usr/bin/env bash
# Run bench/move_bench.py inside a network namespace that has only a
# loopback interface, so Orthanc (which listens on every interface) and the
# other servers are reachable only from inside. Needs root, DCMTK and Orthanc
# (tests/services.sh installs both). Arguments go to move_bench.py.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

namespace="dvbench-$$"
ip netns add "$namespace"
trap 'ip netns delete "$namespace"' EXIT
ip netns exec "$namespace" ip link set lo up
ip netns exec "$namespace" .venv/bin/python bench/move_bench.py "$@"
