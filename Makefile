# shiftplane — the two commands a newcomer needs:
#   make demo   a complete local rollout you can watch (installs Envoy if missing)
#   make test   every test: go vet, then go test -race ./... against a real Envoy
# .ci/run runs `make test`.

GO ?= go
# The e2e tests find Envoy through ENVOY_BIN; `make envoy` installs it when missing.
ENVOY_BIN = $(shell bash scripts/install-envoy.sh)

.PHONY: all build test demo vet fmt-check

all: build

build:
	$(GO) build ./...

test:
	@envoy_bin="$$(bash scripts/install-envoy.sh)" && echo "envoy: $$envoy_bin" && \
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" $(GO) test -race -timeout 20m ./...

demo:
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" $(GO) run ./cmd/shiftplane demo

include Makefile.envoy
include Makefile.proto
-include Makefile.bench
