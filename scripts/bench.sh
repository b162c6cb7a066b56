#!/usr/bin/env bash
# Full benchmarks. Figures go to docs/BENCHMARKS.md with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench "${BENCH:-.}" -benchtime "${BENCHTIME:-1s}" -count "${COUNT:-1}" ./... 
