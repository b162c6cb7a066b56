#!/usr/bin/env bash
# Held-out check of the forecaster on the M4 competition's 414 hourly
# series (the data set behind the issue's "lesson from M4"): each series'
# training and test parts joined, backtested with the issue-6 protocol
# against the baselines. The engine was not tuned on them before round 12
# (BENCHMARKS.md, "Accuracy work, round 12"), whose summary this prints.
#
#   git clone https://github.com/Mcompetitions/M4-methods   (only Dataset/ is read)
#   scripts/validate-forecast-m4.sh M4-methods/Dataset
#
# M4 gives no timestamps for hourly series (only a starting date in an
# info file): the buckets are numbered hours from 2015-07-01 00:00 UTC, so
# the hour of day and day of week are consistent within a series but not
# the real ones, and no calendar applies. Series of 748 hours get a window
# shortened to keep 168 origins (the protocol's own rule for short files).
#
# Per series: the hybrid's MASE over the best baseline's at h1 and h12;
# then the geometric mean of the ratios, how many meet the 0.9 target, how
# many are worse than the best baseline, and the 80% coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: scripts/validate-forecast-m4.sh M4-methods/Dataset (a checkout of github.com/Mcompetitions/M4-methods)}
train=$DIR/Train/Hourly-train.csv
test=$DIR/Test/Hourly-test.csv
if [ ! -f "$train" ] || [ ! -f "$test" ]; then
  echo "$DIR does not look like M4's Dataset directory (no Train/Hourly-train.csv and Test/Hourly-test.csv)" >&2
  exit 1
fi
mkdir -p bin
go build -o bin/controller ./cmd/controller
long=$(mktemp --suffix .csv)
trap 'rm -f "$long"' EXIT
# Wide rows "H1","605","586",... (train, then test) to timestamp,series,value.
awk -F, 'BEGIN { print "timestamp,series,value"; t0 = 1435708800 }
  FNR == 1 { next }
  { id = $1; gsub(/"/, "", id); n = cnt[id] + 0
    for (i = 2; i <= NF; i++) { v = $i; gsub(/"/, "", v); if (v != "") { printf "%s,%s,%s\n", strftime("%Y-%m-%dT%H:%M:%SZ", t0 + n * 3600, 1), id, v; n++ } }
    cnt[id] = n }' "$train" "$test" > "$long"
echo "== machine: $(nproc) vCPU, $(go version | cut -d' ' -f3), load $(cut -d' ' -f1-3 /proc/loadavg), $(git rev-parse --short HEAD)"
echo "== M4 hourly: $(tail -n +2 "$long" | cut -d, -f2 | sort -u | wc -l) series, $(($(wc -l < "$long") - 1)) values"
bin/controller forecast backtest --csv "$long" --methods naive,snaive_day,snaive_week,ets,hybrid 2>/dev/null |
  awk '$2 == "hybrid" {
      n++; l1 += log($14); l12 += log($15)
      p1 += ($14 <= 0.9); p12 += ($15 <= 0.9); w1 += ($14 > 1); w12 += ($15 > 1)
      c1 += $10; c12 += $11; in1 += ($10 >= 0.75 && $10 <= 0.85); in12 += ($11 >= 0.75 && $11 <= 0.85) }
    END { printf "series %d; hybrid/best baseline geometric mean h1 %.3f h12 %.3f; <= 0.9: h1 %d h12 %d; worse than the best baseline: h1 %d h12 %d\n",
        n, exp(l1 / n), exp(l12 / n), p1, p12, w1, w12
      printf "80%% coverage: mean h1 %.3f h12 %.3f; in 75-85%%: h1 %d h12 %d of %d\n", c1 / n, c12 / n, in1, in12, n }'
