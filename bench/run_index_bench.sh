#!/usr/bin/env bash
# Run bench/index_bench.py --orthanc inside a network namespace that has only
# a loopback interface, so Orthanc (which listens on every interface) is
# reachable only from inside. Needs root and Orthanc (tests/services.sh
# installs it). Arguments go to index_bench.py.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

namespace="dvindexbench-$$"
ip netns add "$namespace"
trap 'ip netns delete "$namespace"' EXIT
ip netns exec "$namespace" ip link set lo up
ip netns exec "$namespace" .venv/bin/python bench/index_bench.py --orthanc "$@"
