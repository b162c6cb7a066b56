# Container images of premirror's two programs (the BPF objects are
# generated and committed, so the build needs only Go):
#
#   docker build --target edge-agent -t ghcr.io/premirror/edge-agent:latest .
#   docker build --target controller -t ghcr.io/premirror/controller:latest .
#
# deploy/kubernetes/*.yaml run them (make images builds both).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/edge-agent ./cmd/edge-agent \
 && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/controller ./cmd/controller

# The agent runs as root with CAP_BPF/NET_ADMIN/PERFMON (the DaemonSet adds
# them); its init container needs a shell and mount(8) to mount the bpffs.
FROM debian:bookworm-slim AS edge-agent
COPY --from=build /out/edge-agent /usr/local/bin/edge-agent
ENTRYPOINT ["/usr/local/bin/edge-agent"]

# The controller needs nothing from the system: a static binary, non-root.
FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /out/controller /usr/local/bin/controller
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/controller"]
