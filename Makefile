# The two commands: `make run` and `make test`. See README.md.
SHELL := /bin/bash
# The PostgreSQL majors this extension supports; `make test` without
# PG_VERSION tests each in turn, every other target takes 15.
MAJORS := 15 17 18
EVERY_MAJOR := $(if $(PG_VERSION),,yes)
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
# 17 and 18 are Debian's own packages inside a Debian chroot that ships them
# (scripts/chroot.sh); 15 is the host's. Inside, REALTIME_CHROOT is set.
IN_MAJOR := $(if $(or $(filter 15,$(PG_VERSION)),$(REALTIME_CHROOT)),,scripts/chroot.sh)

.PHONY: run stop test setup install lint bench bench-quick fuzz package

setup:
	@$(IN_MAJOR) scripts/setup.sh

install: setup
	$(IN_MAJOR) cargo pgrx install $(PROFILE_FLAG) $(SUDO_FLAG) --pg-config $(PG_CONFIG) --features pg$(PG_VERSION)

run: install
	@$(IN_MAJOR) scripts/cluster.sh start

stop:
	@$(IN_MAJOR) scripts/cluster.sh stop

ifeq ($(EVERY_MAJOR),yes)
test:
	@for v in $(MAJORS); do $(MAKE) --no-print-directory test PG_VERSION=$$v || exit 1; done
else
test: setup
	@$(IN_MAJOR) scripts/test.sh
endif

# target/postgresql-$(PG_VERSION)-realtime_<version>_amd64.deb
package: setup
	@$(IN_MAJOR) scripts/package.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets --features pg_test -- -D warnings

# BENCH_ARGS="--only 3,7" runs some scenarios alone and prints their figures.
bench: setup
	@$(IN_MAJOR) scripts/bench.sh $(BENCH_ARGS)

bench-quick: setup
	@$(IN_MAJOR) scripts/bench.sh --quick $(BENCH_ARGS)

# Millions of cases of the property tests over untrusted input (not in CI).
fuzz: setup
	@scripts/fuzz.sh
