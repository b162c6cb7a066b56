#!/usr/bin/env bash
# Held-out check of the forecaster on daily series with a yearly season:
# the issue-6 backtest on the example data of Prophet's repository that is
# not in ../shared/data/dev — page views of the R language's Wikipedia
# article 2008–2015 (as is, and the two copies Prophet's documentation
# corrupts with outliers: 2010 replaced by constants, a week of zeros in
# June 2015) and Seattle pedestrian counts 2017–2021 (COVID-19 breaks the
# yearly pattern). The engine was not tuned on them; BENCHMARKS.md
# ("Accuracy work, round 6") records the summary this prints.
#
#   git clone https://github.com/facebook/prophet   (only examples/ is read)
#   scripts/validate-forecast-daily.sh prophet/examples
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: scripts/validate-forecast-daily.sh prophet/examples (a checkout of github.com/facebook/prophet)}
if [ ! -f "$DIR/example_wp_log_R.csv" ]; then
  echo "$DIR does not look like Prophet's examples directory (no example_wp_log_R.csv)" >&2
  exit 1
fi
mkdir -p bin
go build -o bin/controller ./cmd/controller
echo "== machine: $(nproc) vCPU, $(go version | cut -d' ' -f3), load $(cut -d' ' -f1-3 /proc/loadavg), $(git rev-parse --short HEAD)"
for f in example_wp_log_R example_wp_log_R_outliers1 example_wp_log_R_outliers2 example_pedestrians_covid; do
  bin/controller forecast backtest --csv "$DIR/$f.csv" --methods naive,snaive_day,snaive_week,ets,hybrid 2>/dev/null |
    awk -v s="$f" '$2 == "hybrid" { $1 = s; print }'
done | awk 'BEGIN { printf "%-32s %8s %8s %8s %8s %8s %8s\n", "series", "mase_h1", "mase_h12", "vs_h1", "vs_h12", "cov_h1", "cov_h12" }
    { printf "%-32s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f\n", $1, $5, $6, $14, $15, $10, $11
      n++; l1 += log($14); l12 += log($15) }
    END { printf "series %d; hybrid/best baseline geometric mean h1 %.3f h12 %.3f\n", n, exp(l1 / n), exp(l12 / n) }'
