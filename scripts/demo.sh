#!/usr/bin/env bash
# `make demo`: the testbed, the real agents, traffic, counters, cleanup.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "make demo needs root (network namespaces, XDP, bpffs): sudo make demo" >&2
  exit 1
fi
exec ./bin/premirror-demo -topology cmd/premirror-demo/topology.yaml -agent ./bin/edge-agent -controller ./bin/controller "$@"
