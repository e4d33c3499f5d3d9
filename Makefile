# Ketenpoort — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
SWIFT ?= swift
BUILD_DEPS := libssl-dev libsqlite3-dev libpq-dev pkg-config openssl
TEST_DEPS := $(BUILD_DEPS) gcc curl nginx-light gnutls-bin procps python3 chromium postgresql systemd
BIN_DEBUG := .build/debug/ketenpoort
BIN_RELEASE := .build/release/ketenpoort

.PHONY: demo test deps test-deps build release bench bench-smoke policy-check policy-test format clean

deps:
	@scripts/install-deps.sh $(BUILD_DEPS)

test-deps:
	@scripts/install-deps.sh $(TEST_DEPS)
	@python3 -c "import jsonschema, yaml" 2>/dev/null || python3 -m pip install -q jsonschema pyyaml

build: deps
	$(SWIFT) build --product ketenpoort

release: deps
	$(SWIFT) build -c release --product ketenpoort

## make demo: build, create .demo/ (PKI, keys, configuration) when absent, run the gateway on Policies/.
demo: build
	$(BIN_DEBUG) demo --dir .demo

## make test: every test — unit, policy tests, integration over real mutual TLS, CLI — and a bench smoke run.
test: test-deps
	$(SWIFT) build --build-tests
	$(BIN_DEBUG) policy check Policies
	$(BIN_DEBUG) policy test Policies
	python3 scripts/check_schema.py
	python3 scripts/check_openapi.py
	python3 scripts/check_deploy.py
	python3 scripts/check_deploy.py --self-test
	$(SWIFT) test --skip-build --no-parallel 2>&1 | tee .build/swift-test-output.txt
	python3 scripts/bench.py --smoke --bin $(BIN_DEBUG)
	$(BIN_DEBUG) bench log --entries 2000 --report-entries 5000
	python3 scripts/bench_exchanges.py --smoke --bin $(BIN_DEBUG)
	python3 scripts/bench_scaleout.py --smoke --bin $(BIN_DEBUG)

## make bench: the full benchmark against nginx (release build, pinned cores, three alternating runs).
bench: release test-deps
	python3 scripts/bench.py --bin $(BIN_RELEASE)
	@python3 -c "import cedarpy" 2>/dev/null || python3 -m pip install -q cedarpy
	python3 scripts/bench_policy.py $(BIN_RELEASE)
	$(BIN_RELEASE) bench pseudonym
	$(BIN_RELEASE) bench log --dir /tmp/ketenpoort-bench-log
	python3 scripts/bench_exchanges.py --bin $(BIN_RELEASE)
	python3 scripts/bench_routemap.py --bin $(BIN_RELEASE) --dir /tmp/ketenpoort-bench-log
	python3 scripts/bench_scaleout.py --bin $(BIN_RELEASE)

policy-check: build
	$(BIN_DEBUG) policy check Policies

policy-test: build
	$(BIN_DEBUG) policy test Policies

clean:
	rm -rf .build .demo
