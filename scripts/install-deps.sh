#!/usr/bin/env bash
# Installs what premirror's build, tests and demo need on a Debian machine.
# Idempotent: it only calls apt-get when a tool is missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have clang-16  || need+=(clang-16 llvm-16)
have bpftool   || need+=(bpftool)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
have ip        || need+=(iproute2)
have iperf3    || need+=(iperf3)
have rsync     || need+=(rsync)
have ethtool   || need+=(ethtool)
[ -d /usr/include/asm ] || [ -d /usr/include/x86_64-linux-gnu/asm ] || need+=(linux-libc-dev)
# Legacy GeoIP country databases for `controller forecast ingest-log --geoip`
# and geoiplookup, which internal/geoip's tests compare the reader against.
[ -f /usr/share/GeoIP/GeoIP.dat ] && [ -f /usr/share/GeoIP/GeoIPv6.dat ] || need+=(geoip-database)
have geoiplookup || need+=(geoip-bin)
# xdp-filter, a libxdp firewall: the agent's chaining test runs it beside
# the router (TestChainXDPFilter).
have xdp-filter || need+=(xdp-tools)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root (sudo make ...)" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Go modules (the module proxy is reachable; this makes later steps offline).
go mod download

# bpffs for pinning; the kernel tests and the agent need it.
if [ "$(id -u)" = 0 ] && ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi

# --- control protocol code generation (issue 4: api/premirror/v1) ---------
# protoc from Debian and the two Go plugins at the versions
# scripts/gen-proto.sh pins; each is installed only when missing or different.
if ! command -v protoc >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing protobuf-compiler; run as root (sudo make ...)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null
fi
gobin="$(go env GOBIN)"
[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
if [ "$("$gobin/protoc-gen-go" --version 2>/dev/null)" != "protoc-gen-go v1.36.12" ]; then
  GOFLAGS= go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
fi
if [ "$("$gobin/protoc-gen-go-grpc" --version 2>/dev/null)" != "protoc-gen-go-grpc 1.6.2" ]; then
  GOFLAGS= go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
fi
# --- end control protocol code generation ----------------------------------

# staticcheck, which scripts/lint.sh runs after go vet (pinned like the
# plugins above).
if ! "$gobin/staticcheck" -version 2>/dev/null | grep -q '(0.8.2)'; then
  GOFLAGS= go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi

# promtool checks the Prometheus alert rules and runs their unit tests
# (deploy/prometheus, TestAlertRules). Debian ships it only inside the
# prometheus server package: its binary alone is taken from the package,
# so no server is installed, started or left listening.
if ! have promtool; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing promtool; run as root (sudo make ...)" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  chmod 755 "$tmp" # apt-get download writes as the _apt user
  if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
fi
