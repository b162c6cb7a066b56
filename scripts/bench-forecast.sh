#!/usr/bin/env bash
# Forecasting benchmarks (issue 6): the rolling-origin backtest of the
# hybrid and the baselines on every dev series, the access-location
# scoring, an explain demo, the 10,000-series update benchmark, and the
# real access log (ingest-log with GeoIP countries, then the backtest and
# the location scoring on its counts). The tables it prints are recorded
# in docs/BENCHMARKS.md ("Forecasting").
#
#   scripts/bench-forecast.sh [data-dir]        (or PREMIRROR_DEV_DATA=...)
#   JSON=1 scripts/bench-forecast.sh            backtest rows as JSON objects
#
# The data directory defaults to ../shared/data/dev relative to the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${PREMIRROR_DEV_DATA:-../shared/data/dev}}
if [ ! -d "$DATA" ]; then
  echo "data directory $DATA not found (pass it as the first argument or set PREMIRROR_DEV_DATA)" >&2
  exit 1
fi
EVENTS=internal/forecast/testdata/nyc_events_2014_2015.csv
LATENCY=internal/forecast/testdata/nyc_latency_ms.csv
PLAYOFFS=internal/forecast/testdata/peyton_manning_playoffs.csv
UBER=$DATA/uber_nyc_boroughs_hourly_2015-01_04.csv
mkdir -p bin
go build -o bin/controller ./cmd/controller
CTL=bin/controller
FMT=()
if [ -n "${JSON:-}" ]; then FMT=(--json); fi

echo "== machine: $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(go version | cut -d' ' -f3), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== data: $DATA"

M=naive,snaive_day,snaive_week,ets,hybrid
echo
echo "== backtest: NAB 5-minute series aggregated to hourly (gauges averaged, counts and bytes summed)"
for f in nab_ec2_cpu_utilization_53ea38:mean nab_rds_cpu_utilization_cc0c53:mean \
         nab_elb_request_count_8c0756:sum nab_ec2_network_in_257a54:sum nab_ec2_disk_write_bytes_1ef3de:sum; do
  "$CTL" forecast backtest --csv "$DATA/${f%%:*}.csv" --hourly --agg "${f##*:}" --methods "$M,hybrid_nopool,hybrid_nogru" "${FMT[@]}"
done

echo
echo "== backtest: NYC taxi, 30-minute counts summed to hourly, with the events calendar ($EVENTS)"
"$CTL" forecast backtest --csv "$DATA/nab_nyc_taxi.csv" --hourly --events "$EVENTS" --methods "$M,hybrid_nopool,hybrid_nofeeds,hybrid_nogru" "${FMT[@]}"

echo
echo "== backtest: Uber pickups per borough, hourly, weather and holiday columns as feeds, events calendar;"
echo "   marked days: calendar days plus days with precipitation or snow cover"
"$CTL" forecast backtest --csv "$UBER" --events "$EVENTS" --mark 'liq_precp_1hr>0,snow_depth_in>0' --methods "$M,hybrid_nopool,hybrid_nofeeds" "${FMT[@]}"

echo
echo "== backtest: Prophet daily series (weekly season in the models; MASE season = one day = one bucket, as the protocol says),"
echo "   with Peyton Manning's playoff games as events ($PLAYOFFS, the dates of Prophet's documentation)"
"$CTL" forecast backtest --csv "$DATA/prophet_wp_log_peyton_manning.csv" --events "$PLAYOFFS" --methods "$M,hybrid_nopool,hybrid_nofeeds,hybrid_noyear" "${FMT[@]}"

echo
echo "== access-location distribution, Uber boroughs: train Jan-Mar 2015, test April, horizons 1 h and 24 h"
"$CTL" forecast locations --csv "$UBER" --events "$EVENTS"

echo
echo "== explain demo (Uber boroughs as one resource's regions; illustrative route costs in $LATENCY)"
"$CTL" forecast explain --csv "$UBER" --resource uber-app --latency "$LATENCY" --mirrors Manhattan \
  --at "2015-04-24 17:00" --value-per-request-second 0.003

echo
echo "== Go benchmarks: one hourly bucket for 10,000 and 1,000 series; one series' update"
go test -run '^$' -bench 'EngineBucket|HybridObserve' -benchtime "${BENCHTIME:-10x}" -benchmem ./internal/forecast

echo
echo "== access log: $DATA/elastic_apache_access.log → hourly requests per country (ingest-log, GeoIP), then backtest and locations"
APACHE=$DATA/elastic_apache_access.log
GEO4=/usr/share/GeoIP/GeoIP.dat
GEO6=/usr/share/GeoIP/GeoIPv6.dat
if [ ! -f "$APACHE" ]; then
  echo "skipped: $APACHE not found"
elif [ ! -f "$GEO4" ] || [ ! -f "$GEO6" ]; then
  echo "skipped: $GEO4 / $GEO6 not found (apt-get install geoip-database, or scripts/install-deps.sh)"
else
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
  # Every request of this log is stamped at minute :05 of its hour, so the
  # hour is its real resolution (15-minute buckets would be 3 zeros in 4).
  "$CTL" forecast ingest-log --geoip "$GEO4" --geoip6 "$GEO6" --total -o "$OUT/apache_total.csv" "$APACHE"
  "$CTL" forecast ingest-log --geoip "$GEO4" --geoip6 "$GEO6" --top 5 -o "$OUT/apache_countries.csv" "$APACHE"
  "$CTL" forecast ingest-log --geoip "$GEO4" --geoip6 "$GEO6" --top 10 -o "$OUT/apache_countries10.csv" "$APACHE"
  # 82 complete hours: with 21 origins and the 12-hour horizon the window
  # shrinks to 50 hours (the protocol's least is 49: two daily seasons + 1).
  "$CTL" forecast backtest --csv "$OUT/apache_total.csv" --min-origins 21 --methods "naive,snaive_day,ets,hybrid,hybrid_nopool,hybrid_nogru" "${FMT[@]}"
  "$CTL" forecast backtest --csv "$OUT/apache_countries.csv" --min-origins 21 --methods "naive,snaive_day,ets,hybrid" "${FMT[@]}"
  # Location scoring: train on the first 2.5 days, test the last day (21 hours).
  "$CTL" forecast locations --csv "$OUT/apache_countries.csv" --test-from 2015-05-20 --horizons 1,24
  "$CTL" forecast locations --csv "$OUT/apache_countries10.csv" --test-from 2015-05-20 --horizons 1,24
  echo
  echo "== Go benchmarks: log ingestion (parse + locate + count) against a plain bufio line scan"
  PREMIRROR_DEV_DATA="$DATA" go test -run '^$' -bench 'Ingest|ScanLines' -benchtime "${BENCHTIME_INGEST:-2s}" -benchmem ./internal/accesslog
fi
