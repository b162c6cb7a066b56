#!/usr/bin/env bash
# Routing-policy replay on the shared latency matrices (issue 4): our policy
# against origin-only, geography-nearest, round robin, greedy without damping
# and the per-instant oracle. Figures go to docs/BENCHMARKS.md, section
# "Controller and routing policy (issue 4)", with this command.
#
#   DATA=dir        latency data directory (default ../shared/data/latency,
#                   resolved from the repository root and its parents)
#   DATASETS=list   "wonderproxy ibm" by default; a path to any matrix works
#   extra arguments go to every run, e.g. scripts/route-eval.sh -seed 2
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
go build -o bin/controller ./cmd/controller
data=${DATA:-../shared/data/latency}
for ds in ${DATASETS:-wonderproxy ibm}; do
  echo "== controller route-eval -data $data -dataset $ds $*"
  bin/controller route-eval -data "$data" -dataset "$ds" "$@"
  echo
done
