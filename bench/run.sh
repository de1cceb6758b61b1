#!/usr/bin/env bash
# Run a benchmark inside a network namespace that has only a loopback
# interface, so Orthanc (which listens on every interface) and the other
# servers are reachable only from inside it. Needs root (ip netns), DCMTK and
# Orthanc (tests/services.sh installs both).
#
# Usage: bench/run.sh [options of bench/run.py]
# The interpreter is .venv/bin/python unless BENCH_PYTHON names another one.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${BENCH_PYTHON:-.venv/bin/python}"
namespace="dvbench-$$"
ip netns add "$namespace"
trap 'ip netns delete "$namespace"' EXIT
ip netns exec "$namespace" ip link set lo up
ip netns exec "$namespace" "$python" -m bench.run "$@"
