# Beamline extension registry syncer. `make` lists the targets.
SHELL := /bin/bash
GO ?= go
PKGS := ./...
BENCH_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Check (and where possible install) what the tests and `make run` need: Go, PostgreSQL >= 14 server binaries, chromium (headless, for the status page test), the nats-server matrix, promtool
	@bash scripts/deps.sh
	@list=$$(bash scripts/nats-servers.sh) && echo "deps: nats-server binaries (REGISTRY_NATS_SERVERS): $$list"
	@if p=$$(bash scripts/promtool.sh); then echo "deps: promtool for the deploy/ tests ($$p)"; else echo "deps: without promtool the deploy/ tests fail (see above)" >&2; fi

.PHONY: build
build: ## Build bin/syncer
	$(GO) build -o bin/syncer ./cmd/syncer

.PHONY: run
run: deps build ## Start everything on this machine (private PostgreSQL, embedded NATS, migrations, fixtures, syncer)
	./bin/syncer dev

.PHONY: test
test: deps ## Unit and integration tests with the race detector (starts its own PostgreSQL and NATS servers, every supported nats-server release)
	REGISTRY_NATS_SERVERS="$${REGISTRY_NATS_SERVERS:-$$(bash scripts/nats-servers.sh --list)}" $(GO) test -race -count=1 -timeout 20m $(PKGS)

.PHONY: bench
bench: deps build ## Benchmarks: propagation vs the raw floor, burst, scale, fan-out, lookups (writes bench-results/)
	$(GO) run ./test/bench $(BENCH_ARGS)

.PHONY: bench-fixtures
bench-fixtures: deps ## Fixtures at scale: export, import into an empty registry, verify, re-import, clean export of FIXTURES_LARGE (100000) extensions
	FIXTURES_LARGE=$${FIXTURES_LARGE:-100000} $(GO) test -count=1 -run TestLargeRoundTrip -v -timeout 30m ./fixtures/

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

.PHONY: generate
generate: ## Regenerate the files made from package rules (migration 00005, the JSON Schemas)
	$(GO) generate ./rules

.PHONY: verify
verify: ## Fail if a file generated from package rules is stale
	$(GO) test -count=1 -run TestGeneratedFilesFresh ./rules

.PHONY: tidy-check
tidy-check: ## Fail if go.mod/go.sum are not tidy
	$(GO) mod tidy && git diff --exit-code go.mod go.sum

.PHONY: clean
clean: ## Remove build output and the `make run` data directory
	rm -rf bin .dev
