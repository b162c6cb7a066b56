#!/usr/bin/env bash
# Replicator benchmark (issue 5), all measured side by side in one run on
# loopback:
#   * delta cycle after rewriting 1% of the 4 KiB blocks of a 1 GiB image at
#     random, against rsync in daemon mode (--inplace --no-whole-file, default
#     block size and -B 4096): time and bytes on the wire;
#   * full copy throughput against the ceilings of this machine measured in the
#     same run: loopback TCP (iperf3) and sequential disk read (cold cache);
#   * Merkle verify of two copies against rsync's full-checksum run (-c).
# The last line is the summary:
#   replication-bench delta_s=… rsync_s=… speedup=… delta_bytes=… changed_bytes=…
#   bytes_ratio=… full_MBps=… ceiling_MBps=… full_vs_ceiling=…
# Sizes: SIZE_MB (default 1024) and FRACTION (default 0.01). MB = 10^6 bytes.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${SIZE_MB:-1024}
FRACTION=${FRACTION:-0.01}
for t in rsync iperf3 dd awk; do
  command -v "$t" >/dev/null || { echo "bench-replication: $t is missing (make deps)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/premirror-bench.XXXXXX")
shm=$(mktemp -d /dev/shm/premirror-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work" "$shm"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench-replication: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
calc() { awk "BEGIN { printf \"%.4f\", $1 }"; }
jsonnum() { grep -o "\"$1\": *[0-9.]*" | head -1 | awk -F': *' '{print $2}'; }
free_port() { echo $((20000 + RANDOM % 30000)); }
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "nothing listens on port $1"; return 1
}
drop_cache() { for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none 2>/dev/null || true; done; }

EA="$work/edge-agent"
go build -o "$EA" ./cmd/edge-agent
"$EA" replicate dev-certs --dir "$work/tls" --names src,dst >/dev/null
TLS=(--tls-dir "$work/tls")
size=$((SIZE_MB * 1024 * 1024))

log "making a ${SIZE_MB} MiB random image"
head -c "$size" /dev/urandom >"$work/src.img"
sync
"$EA" replicate init --image "$work/src.img" >/dev/null

# --- ceilings -----------------------------------------------------------------
iport=$(free_port)
iperf3 -s -p "$iport" >/dev/null 2>&1 &
pids+=($!)
wait_port "$iport"
iperf_mbit=$(iperf3 -c 127.0.0.1 -p "$iport" -t 3 -f m | awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i-1) }')
iperf_MBps=$(calc "$iperf_mbit / 8")
drop_cache "$work/src.img"
t0=$(now); dd if="$work/src.img" of=/dev/null bs=4M status=none; t1=$(now)
disk_MBps=$(calc "$size / 1e6 / $(elapsed "$t0" "$t1")")
t0=$(now); dd if=/dev/zero of="$work/write.tmp" bs=4M count=$((SIZE_MB / 4)) conv=fdatasync status=none; t1=$(now)
diskw_MBps=$(calc "$size / 1e6 / $(elapsed "$t0" "$t1")"); rm -f "$work/write.tmp"
ceiling_MBps=$(awk -v a="$iperf_MBps" -v b="$disk_MBps" 'BEGIN { printf "%.1f", (a < b ? a : b) }')
log "ceilings: loopback TCP ${iperf_MBps} MB/s, disk read ${disk_MBps} MB/s (disk write ${diskw_MBps} MB/s)"

# --- mirror node ----------------------------------------------------------------
rport=$(free_port)
"$EA" replicate serve --node dst "${TLS[@]}" --listen "127.0.0.1:$rport" \
  --volume "shm=$shm/mirror.img" --volume "disk=$work/mirror.img" &
pids+=($!)
wait_port "$rport"
push() { "$EA" replicate push --node src "${TLS[@]}" --image "$work/src.img" --json "$@"; }

# Full copy, receiver in memory: the single-machine stand-in for a mirror with
# its own disk, so the source's disk read and the network are what is measured.
drop_cache "$work/src.img"
out=$(push --peer "dst@127.0.0.1:$rport" --volume shm --mode full)
full_s=$(calc "$(echo "$out" | jsonnum full_ns) / 1e9")
full_MBps=$(calc "$size / 1e6 / $full_s")
full_wire=$(echo "$out" | jsonnum wire_bytes)
log "full copy (receiver in memory): ${full_s}s ${full_MBps} MB/s, ${full_wire} bytes on the wire"

# Full copy to a mirror on the same disk (it also seeds the delta benchmark).
drop_cache "$work/src.img"
out=$(push --peer "dst@127.0.0.1:$rport" --volume disk --mode full)
fulld_s=$(calc "$(echo "$out" | jsonnum full_ns) / 1e9")
fulld_MBps=$(calc "$size / 1e6 / $fulld_s")
log "full copy (receiver on the same disk, synced): ${fulld_s}s ${fulld_MBps} MB/s"

# --- delta against rsync ----------------------------------------------------------
mkdir -p "$work/rs"
cp "$work/src.img" "$work/rs/default.img"
cp "$work/src.img" "$work/rs/b4096.img"
changed_bytes=$("$EA" replicate write --image "$work/src.img" --fraction "$FRACTION" --seed 42 | sed -n 's/.*changed_bytes=\([0-9]*\).*/\1/p')
sync

t0=$(now)
out=$(push --peer "dst@127.0.0.1:$rport" --volume disk --mode delta)
t1=$(now)
delta_s=$(elapsed "$t0" "$t1")
delta_bytes=$(echo "$out" | jsonnum wire_bytes)
cycle_s=$(calc "$(echo "$out" | jsonnum cycle_ns) / 1e9")
log "delta: ${delta_s}s for the whole command (cycle ${cycle_s}s), ${delta_bytes} bytes on the wire for ${changed_bytes} changed"

sport=$(free_port)
cat >"$work/rsyncd.conf" <<EOF
use chroot = no
[bench]
  path = $work/rs
  read only = false
  uid = root
  gid = root
EOF
rsync --daemon --no-detach --config="$work/rsyncd.conf" --port="$sport" --address=127.0.0.1 &
pids+=($!)
wait_port "$sport"
rsync_run() { # args: rsync options...; prints seconds and bytes sent
  local t0 t1 out
  t0=$(now); out=$(rsync --inplace --no-whole-file --stats "$@"); t1=$(now)
  echo "$(elapsed "$t0" "$t1") $(echo "$out" | awk -F': ' '/^Total bytes sent/ { gsub(/,/, "", $2); print $2 }')"
}
# --ignore-times: the copies may share the source's size and mtime second,
# and rsync must run its delta algorithm, not skip the file.
read -r rsync_s rsync_bytes < <(rsync_run --ignore-times "$work/src.img" "rsync://127.0.0.1:$sport/bench/default.img")
read -r rsyncb_s rsyncb_bytes < <(rsync_run --ignore-times -B 4096 "$work/src.img" "rsync://127.0.0.1:$sport/bench/b4096.img")
log "rsync: ${rsync_s}s ${rsync_bytes} bytes; rsync -B 4096: ${rsyncb_s}s ${rsyncb_bytes} bytes"

# --- verify against rsync -c ---------------------------------------------------
drop_cache "$work/src.img" "$work/mirror.img"
t0=$(now)
out=$("$EA" replicate verify --node src "${TLS[@]}" --image "$work/src.img" --peer "dst@127.0.0.1:$rport" --volume disk --json)
t1=$(now)
verify_s=$(elapsed "$t0" "$t1")
differ=$(echo "$out" | grep -c '^ *[0-9]' || true)
drop_cache "$work/src.img" "$work/rs/default.img"
read -r rsyncc_s rsyncc_bytes < <(rsync_run -c "$work/src.img" "rsync://127.0.0.1:$sport/bench/default.img")
log "verify: ${verify_s}s (${differ} differing blocks); rsync -c: ${rsyncc_s}s"

speedup=$(calc "$rsync_s / $delta_s")
bytes_ratio=$(calc "$delta_bytes / $changed_bytes")
full_vs=$(calc "$full_MBps / $ceiling_MBps")
cat <<EOF
details: size_MiB=${SIZE_MB} fraction=${FRACTION} cycle_s=${cycle_s} rsync_bytes=${rsync_bytes} rsyncB4096_s=${rsyncb_s} rsyncB4096_bytes=${rsyncb_bytes}
details: iperf3_MBps=${iperf_MBps} disk_read_MBps=${disk_MBps} disk_write_MBps=${diskw_MBps} full_disk_MBps=${fulld_MBps} full_wire_bytes=${full_wire}
details: verify_s=${verify_s} verify_differ=${differ} rsync_checksum_s=${rsyncc_s} verify_speedup=$(calc "$rsyncc_s / $verify_s")
replication-bench delta_s=${delta_s} rsync_s=${rsync_s} speedup=${speedup} delta_bytes=${delta_bytes} changed_bytes=${changed_bytes} bytes_ratio=${bytes_ratio} full_MBps=${full_MBps} ceiling_MBps=${ceiling_MBps} full_vs_ceiling=${full_vs}
EOF
