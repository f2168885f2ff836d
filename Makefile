# Developer tasks, in one place. Every target installs what it needs (idempotent).
SHELL := /bin/bash
APT_PACKAGES := runsc busybox-static debootstrap umoci skopeo hyperfine curl python3-venv \
	docker-registry buildah apache2-utils attr libcap2-bin openssl
FIXTURES ?= $(HOME)/.cache/hutch/fixtures
DEMO_HOME ?= /tmp/hutch-demo
# The Python SDK conformance suite (tests/python) runs in its own venv.
PYVENV := target/pyvenv

.PHONY: setup fixtures build test lint demo bench pytest soak

## setup: system packages (gVisor, fixture tools) and cargo-nextest
setup:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

## fixtures: the busybox, Debian+python3 and oracle (layer edge cases) test images (built offline, cached)
fixtures: setup
	bash fixtures/build-all.sh $(FIXTURES) >/dev/null

build:
	cargo build --release

## test: everything the project checks, against real gVisor sandboxes
test: setup fixtures
	cargo nextest run --workspace --no-fail-fast
	$(MAKE) pytest

## pytest: the published Tensorlake Python SDK against a real `hutch serve` (tests/python).
## pytest exits 5 when it collects nothing; like any non-zero exit, that fails the target.
## It uses the debug binary the Rust tests already built.
pytest: setup $(PYVENV)/.installed
	cargo build -p hutch-cli
	HUTCH_BIN=$(CURDIR)/target/debug/hutch $(PYVENV)/bin/python -m pytest -q tests/python

## soak: the heavy security cases `make test` skips (crates/hutch-cli/tests/soak_crash.rs):
## 50 rounds of `kill -9` of the server and a build mid-create/delete, with leak checks after
## each (HUTCH_SOAK_ROUNDS, HUTCH_SOAK_SEED), and header floods against the API.
soak: setup fixtures
	cargo nextest run -p hutch-cli --test soak_crash --run-ignored only --no-capture

$(PYVENV)/.installed: tests/python/requirements.txt | setup
	python3 -m venv $(PYVENV)
	$(PYVENV)/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## demo: the main job: `hutch serve` with embedded state, then python3 in a gVisor sandbox
## created through its API (the server is stopped afterwards; sandboxes would outlive it).
demo: setup fixtures build
	@HUTCH_HOME=$(DEMO_HOME) target/release/hutch image ls | grep -q '^debian:latest' || \
	  HUTCH_HOME=$(DEMO_HOME) target/release/hutch image import $(FIXTURES)/debian --name debian
	bash scripts/demo.sh target/release/hutch $(DEMO_HOME)

## bench: figures against raw runsc (see docs/benchmarks.md)
bench: setup fixtures build
	cargo run --release -p hutch-bench --bin hutch-bench
	cargo build --release -p hutch-bench --bin hutch-bench-server
	target/release/hutch-bench-server target/release/hutch
	cargo build --release -p hutch-bench --bin hutch-bench-pull
	target/release/hutch-bench-pull target/release/hutch
	cargo build --release -p hutch-bench --bin hutch-bench-build
	target/release/hutch-bench-build target/release/hutch
	cargo build --release -p hutch-bench --bin hutch-bench-seed
	target/release/hutch-bench-seed target/release/hutch
