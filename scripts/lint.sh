#!/usr/bin/env bash
# gofmt, go vet, staticcheck, and a check that the committed generated files match `go generate`.
set -euo pipefail
cd "$(dirname "$0")/.."

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt needed:" $unformatted >&2
  exit 1
fi
go vet ./...

# staticcheck (scripts/install-deps.sh installs the pinned version; a
# machine without it skips the check with a note rather than fail lint).
gobin="$(go env GOBIN)"
[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
if [ -x "$gobin/staticcheck" ]; then
  "$gobin/staticcheck" ./...
else
  echo "lint: staticcheck not installed (scripts/install-deps.sh installs it); skipped" >&2
fi

if git rev-parse --git-dir >/dev/null 2>&1 && command -v clang-16 >/dev/null; then
  go generate ./...
  if ! git diff --exit-code --stat -- '*.go' '*.o'; then
    echo "generated files are stale: run 'make generate' and commit" >&2
    exit 1
  fi
fi
