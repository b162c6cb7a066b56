# premirror — developer entry points. `make help` lists them.
SHELL := /bin/bash
GO    ?= go
BIN   := bin

.DEFAULT_GOAL := help

.PHONY: help
help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install the Debian packages and Go modules the build and tests need (root)
	@bash scripts/install-deps.sh

.PHONY: generate
generate: ## rebuild the BPF objects and generated Go (needs clang-16)
	$(GO) generate ./...

.PHONY: build
build: ## build all binaries into bin/
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: lint
lint: ## gofmt, go vet, staticcheck, generated files up to date
	@bash scripts/lint.sh

.PHONY: test
test: deps ## everything CI runs: lint, generate check, unit + netns tests, every benchmark once (root)
	@bash scripts/test.sh

.PHONY: test-long
test-long: deps ## long stress and crash loops (root)
	@PREMIRROR_LONG=1 bash scripts/test.sh

.PHONY: fuzz
fuzz: ## run every fuzz target with the fuzzing engine (FUZZTIME=30s each, FUZZ=regexp of targets; root)
	@bash scripts/fuzz.sh

.PHONY: bench
bench: deps ## data-plane and package benchmarks with full benchtime
	@bash scripts/bench.sh

.PHONY: bench-replication
bench-replication: deps ## replicator vs rsync / iperf3 / disk ceilings (issue 5)
	@bash scripts/bench-replication.sh

.PHONY: bench-forecast
bench-forecast: ## forecast backtests on ../shared/data/dev (issue 6)
	@bash scripts/bench-forecast.sh

.PHONY: bench-forecast-nab
bench-forecast-nab: ## forecast backtest on 46 held-out NAB series (NAB=path/to/NAB/data, a numenta/NAB checkout)
	@bash scripts/validate-forecast-nab.sh $(NAB)

.PHONY: bench-forecast-daily
bench-forecast-daily: ## forecast backtest on Prophet's held-out daily examples (PROPHET=path/to/prophet/examples)
	@bash scripts/validate-forecast-daily.sh $(PROPHET)

.PHONY: bench-forecast-m4
bench-forecast-m4: ## forecast backtest on the M4 competition's 414 hourly series (M4=path/to/M4-methods/Dataset)
	@bash scripts/validate-forecast-m4.sh $(M4)

.PHONY: route-eval
route-eval: ## route policy replay on ../shared/data/latency (issue 4)
	@bash scripts/route-eval.sh

.PHONY: demo
demo: deps build ## 3-region testbed, edge router, 4 mirrors, real agent, traffic, counters (root)
	@bash scripts/demo.sh

.PHONY: images
images: ## container images of edge-agent and controller (needs docker; see Dockerfile)
	docker build --target edge-agent -t ghcr.io/premirror/edge-agent:latest .
	docker build --target controller -t ghcr.io/premirror/controller:latest .

.PHONY: vmtest
vmtest: ## run the test binaries on other kernels under qemu
	@bash scripts/vmtest/run.sh

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN)
