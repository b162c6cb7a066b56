#!/usr/bin/env bash
# Runs every fuzz target of the module with the fuzzing engine, one after
# the other (`make test` runs only their seed corpora):
#
#   make fuzz                          # FUZZTIME=30s per target
#   FUZZTIME=5m FUZZ='^Fuzz(Router|Decap)$' make fuzz   # FUZZ: a regexp of target names
#
# A target fails when it writes a reproducer (testdata/fuzz/<target>/…,
# to be committed with the fix). Go 1.26's fuzzing coordinator can also end
# a clean run with "context deadline exceeded" when -fuzztime expires while
# a worker is busy (go.dev/issue/75804, fixed in Go 1.27): without a new
# reproducer that is reported as the toolchain's, not as a failure.
# FuzzRouter and FuzzDecap run the XDP programs through BPF_PROG_TEST_RUN
# and need root, as `make test` does.
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-30s}
FILTER=${FUZZ:-.}

targets=$(grep -rHoE '^func Fuzz[A-Za-z0-9_]+\(' --include='*_test.go' . |
  sed -E 's|^\./(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+)\($|\1 \2|' | awk -v re="$FILTER" '$2 ~ re' | sort)
[ -n "$targets" ] || { echo "no fuzz target matches FUZZ=${FILTER}" >&2; exit 1; }

pass=0 fail=0 race=0
failed=()
while read -r dir target; do
  corpus="$dir/testdata/fuzz/$target"
  before=$(ls "$corpus" 2>/dev/null | sort)
  out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "./$dir" 2>&1)
  rc=$?
  after=$(ls "$corpus" 2>/dev/null | sort)
  if [ $rc -eq 0 ]; then
    pass=$((pass + 1)); echo "ok    $dir $target"
  elif [ "$before" = "$after" ] && grep -q 'context deadline exceeded' <<<"$out"; then
    race=$((race + 1)); echo "ok    $dir $target (ended by go.dev/issue/75804, no reproducer)"
  else
    fail=$((fail + 1)); failed+=("$dir $target")
    echo "FAIL  $dir $target"; tail -20 <<<"$out" | sed 's/^/      /'
  fi
done <<<"$targets"
echo "fuzz: $pass passed, $race ended by the toolchain's deadline race, $fail failed (FUZZTIME=$FUZZTIME)"
[ $fail -eq 0 ] || { printf 'failed: %s\n' "${failed[@]}"; exit 1; }
