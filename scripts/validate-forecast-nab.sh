#!/usr/bin/env bash
# Held-out check of the forecaster: the issue-6 backtest on 46 series of the
# Numenta Anomaly Benchmark that are NOT in ../shared/data/dev (the other
# AWS CloudWatch metrics, Twitter mention volumes, ad-exchange prices,
# traffic sensors, machine temperatures, NAB's artificial daily series).
# The engine was not tuned on them; BENCHMARKS.md ("Held-out NAB series")
# records the summary this prints.
#
#   git clone https://github.com/numenta/NAB    (any checkout; only data/ is read)
#   scripts/validate-forecast-nab.sh NAB/data
#
# Per series: the hybrid's MASE over the best baseline's at h1 and h12 and
# its 80% coverage; then the geometric mean of the ratios, how many meet
# the 0.9 target and how many are worse than the best baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
NAB=${1:?usage: scripts/validate-forecast-nab.sh NAB/data (a checkout of github.com/numenta/NAB)}
if [ ! -d "$NAB/realTweets" ]; then
  echo "$NAB does not look like NAB's data directory (no realTweets/)" >&2
  exit 1
fi
mkdir -p bin
go build -o bin/controller ./cmd/controller
# Gauges are averaged into hours, counts and bytes summed.
list=(
  realAWSCloudwatch/ec2_cpu_utilization_24ae8d:mean realAWSCloudwatch/ec2_cpu_utilization_5f5533:mean
  realAWSCloudwatch/ec2_cpu_utilization_77c1ca:mean realAWSCloudwatch/ec2_cpu_utilization_825cc2:mean
  realAWSCloudwatch/ec2_cpu_utilization_ac20cd:mean realAWSCloudwatch/ec2_cpu_utilization_c6585a:mean
  realAWSCloudwatch/ec2_cpu_utilization_fe7f93:mean realAWSCloudwatch/ec2_disk_write_bytes_c0d644:sum
  realAWSCloudwatch/ec2_network_in_5abac7:sum realAWSCloudwatch/grok_asg_anomaly:mean
  realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn:sum realAWSCloudwatch/rds_cpu_utilization_e47b3b:mean
  realTweets/Twitter_volume_AAPL:sum realTweets/Twitter_volume_AMZN:sum realTweets/Twitter_volume_CRM:sum
  realTweets/Twitter_volume_CVS:sum realTweets/Twitter_volume_FB:sum realTweets/Twitter_volume_GOOG:sum
  realTweets/Twitter_volume_IBM:sum realTweets/Twitter_volume_KO:sum realTweets/Twitter_volume_PFE:sum
  realTweets/Twitter_volume_UPS:sum
  realKnownCause/ambient_temperature_system_failure:mean realKnownCause/cpu_utilization_asg_misconfiguration:mean
  realKnownCause/ec2_request_latency_system_failure:mean realKnownCause/machine_temperature_system_failure:mean
  realKnownCause/rogue_agent_key_hold:mean realKnownCause/rogue_agent_key_updown:mean
  realAdExchange/exchange-2_cpc_results:mean realAdExchange/exchange-2_cpm_results:mean
  realAdExchange/exchange-3_cpc_results:mean realAdExchange/exchange-3_cpm_results:mean
  realAdExchange/exchange-4_cpc_results:mean realAdExchange/exchange-4_cpm_results:mean
  realTraffic/TravelTime_387:mean realTraffic/TravelTime_451:mean realTraffic/occupancy_6005:mean
  realTraffic/occupancy_t4013:mean realTraffic/speed_6005:mean realTraffic/speed_7578:mean
  realTraffic/speed_t4013:mean
  artificialNoAnomaly/art_daily_small_noise:mean artificialNoAnomaly/art_noisy:mean
  artificialWithAnomaly/art_daily_flatmiddle:mean artificialWithAnomaly/art_daily_jumpsdown:mean
  artificialWithAnomaly/art_daily_jumpsup:mean artificialWithAnomaly/art_daily_nojump:mean
  artificialWithAnomaly/art_increase_spike_density:mean artificialWithAnomaly/art_load_balancer_spikes:mean
)
echo "== machine: $(nproc) vCPU, $(go version | cut -d' ' -f3), load $(cut -d' ' -f1-3 /proc/loadavg), $(git rev-parse --short HEAD)"
one() {
  f=${1%%:*}
  bin/controller forecast backtest --csv "$NAB/$f.csv" --hourly --agg "${1##*:}" \
    --methods naive,snaive_day,snaive_week,ets,hybrid 2>/dev/null | awk '$2 == "hybrid"'
}
export -f one
export NAB
printf '%s\n' "${list[@]}" | xargs -P "$(nproc)" -I{} bash -c 'one {}' | sort |
  awk 'BEGIN { printf "%-40s %8s %8s %8s %8s\n", "series", "vs_h1", "vs_h12", "cov_h1", "cov_h12" }
    { printf "%-40s %8.3f %8.3f %8.3f %8.3f\n", $1, $14, $15, $10, $11
      n++; l1 += log($14); l12 += log($15)
      p1 += ($14 <= 0.9); p12 += ($15 <= 0.9); w1 += ($14 > 1); w12 += ($15 > 1)
      c += ($10 >= 0.75 && $10 <= 0.85) + ($11 >= 0.75 && $11 <= 0.85) }
    END { printf "series %d; hybrid/best baseline geometric mean h1 %.3f h12 %.3f; <= 0.9: h1 %d h12 %d; worse than the best baseline: h1 %d h12 %d; 80%% coverage in 75-85%%: %d of %d\n",
      n, exp(l1 / n), exp(l12 / n), p1, p12, w1, w12, c, 2 * n }'

# The access-location model on held-out data: the ten Twitter volumes read
# as one resource's ten locations (hourly sums), trained to 2015-04-01 and
# tested after ("Access-location model on held-out data" in BENCHMARKS.md).
tweets=$(mktemp --suffix .csv)
trap 'rm -f "$tweets"' EXIT
{
  echo "timestamp,location,value"
  for s in AAPL AMZN CRM CVS FB GOOG IBM KO PFE UPS; do
    awk -F, -v s="$s" 'NR > 1 { h[substr($1, 1, 13) ":00:00"] += $2 } END { for (k in h) print k "," s "," h[k] }' \
      "$NAB/realTweets/Twitter_volume_$s.csv"
  done | sort
} > "$tweets"
echo "== access locations: NAB's ten Twitter volumes as one resource's ten locations"
bin/controller forecast locations --csv "$tweets" --test-from 2015-04-01 --horizons 1,24
