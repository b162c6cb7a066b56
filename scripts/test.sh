#!/usr/bin/env bash
# What `make test` (and CI) runs. Root is needed for the BPF and netns tests;
# without it they skip with a message. PREMIRROR_LONG=1 adds the long loops.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== lint"
bash scripts/lint.sh

# Packages that load BPF programs or build network namespaces run without
# -race: their hot loops are kernel-side and the race build only slows the
# timing-sensitive delay line. Every other package runs with -race.
norace='/internal/maps$|/internal/testbed$|/cmd/edge-agent$|/test/e2e$'
all=$(go list ./...)
race_pkgs=$(echo "$all" | grep -Ev "$norace" || true)
kernel_pkgs=$(echo "$all" | grep -E "$norace" || true)

timeout=${PREMIRROR_TEST_TIMEOUT:-25m}
if [ -n "${PREMIRROR_LONG:-}" ]; then timeout=120m; fi

echo "== unit tests (-race)"
go test -race -timeout "$timeout" $race_pkgs

if [ -n "$kernel_pkgs" ]; then
  echo "== kernel and netns tests"
  go test -p 1 -timeout "$timeout" $kernel_pkgs
fi

echo "== every benchmark once"
go test -run '^$' -bench . -benchtime 1x -timeout "$timeout" ./...
