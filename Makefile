# The two commands: `make run` and `make test`. See README.md.
SHELL := /bin/bash
PG_VERSION ?= 15
PG_CONFIG := /usr/lib/postgresql/$(PG_VERSION)/bin/pg_config
# release for `make run` and benchmarks; the tests install the debug build they already compiled.
PROFILE ?= release

ifeq ($(shell id -u),0)
  RUNAS := --runas postgres
  SUDO_FLAG :=
else
  RUNAS := --runas $(shell id -un)
  SUDO_FLAG := --sudo
endif
PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,)

.PHONY: run stop test setup install lint bench bench-quick fuzz

setup:
	@scripts/setup.sh

install: setup
	cargo pgrx install $(PROFILE_FLAG) $(SUDO_FLAG) --pg-config $(PG_CONFIG) --features pg$(PG_VERSION)

run: install
	@scripts/cluster.sh start

stop:
	@scripts/cluster.sh stop

test: setup
	@scripts/test.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets --features pg_test -- -D warnings

# BENCH_ARGS="--only 3,7" runs some scenarios alone and prints their figures.
bench: setup
	@scripts/bench.sh $(BENCH_ARGS)

bench-quick: setup
	@scripts/bench.sh --quick $(BENCH_ARGS)

# Millions of cases of the property tests over untrusted input (not in CI).
fuzz: setup
	@scripts/fuzz.sh
