#!/usr/bin/env bash
# Regenerates api/premirror/v1/*.pb.go from the .proto files (run by
# `go generate ./...` from api/premirror/v1/gen.go). The plugin versions are
# pinned here and installed by scripts/install-deps.sh; the generated files
# name them, so a different version would show up as a diff in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=1.6.2
PROTOC_VERSION="libprotoc 3.21.12"

bin="$(go env GOBIN)"
[ -n "$bin" ] || bin="$(go env GOPATH)/bin"

fail() { echo "gen-proto: $*; run 'make deps' (scripts/install-deps.sh)" >&2; exit 1; }
command -v protoc >/dev/null || fail "protoc is missing"
[ "$(protoc --version)" = "$PROTOC_VERSION" ] || fail "protoc is $(protoc --version), want $PROTOC_VERSION"
[ -x "$bin/protoc-gen-go" ] || fail "$bin/protoc-gen-go is missing"
[ -x "$bin/protoc-gen-go-grpc" ] || fail "$bin/protoc-gen-go-grpc is missing"
[ "$("$bin/protoc-gen-go" --version)" = "protoc-gen-go $PROTOC_GEN_GO_VERSION" ] || fail "protoc-gen-go is not $PROTOC_GEN_GO_VERSION"
[ "$("$bin/protoc-gen-go-grpc" --version)" = "protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION" ] || fail "protoc-gen-go-grpc is not $PROTOC_GEN_GO_GRPC_VERSION"

# Sorted input and relative paths keep the output byte-identical across machines.
protos=$(cd api && find premirror/v1 -name '*.proto' | LC_ALL=C sort)
(cd api && protoc -I . \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  $protos)
