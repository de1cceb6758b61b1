#!/usr/bin/env bash
# Run bench/dicomweb_bench.py inside a network namespace that has only a
# loopback interface, so Orthanc (which listens on every interface) is
# reachable only from inside. Needs root, DCMTK, Orthanc and its DICOMweb
# plugin (tests/services.sh installs them). Arguments go to dicomweb_bench.py.
# The interpreter is .venv/bin/python unless BENCH_PYTHON names another one.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${BENCH_PYTHON:-.venv/bin/python}"
namespace="dvwebbench-$$"
ip netns add "$namespace"
trap 'ip netns delete "$namespace"' EXIT
ip netns exec "$namespace" ip link set lo up
ip netns exec "$namespace" "$python" -m bench.dicomweb_bench "$@"
