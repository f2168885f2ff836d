# Developer tasks, in one place. Every target installs what it needs (idempotent).
SHELL := /bin/bash
APT_PACKAGES := runsc busybox-static debootstrap umoci skopeo hyperfine
FIXTURES ?= $(HOME)/.cache/hutch/fixtures
DEMO_HOME ?= /tmp/hutch-demo

.PHONY: setup fixtures build test lint demo bench

## setup: system packages (gVisor, fixture tools) and cargo-nextest
setup:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

## fixtures: the busybox and Debian+python3 test images (built offline, cached)
fixtures: setup
	bash fixtures/build-all.sh $(FIXTURES) >/dev/null

build:
	cargo build --release

## test: everything the project checks, against real gVisor sandboxes
test: setup fixtures
	cargo nextest run --workspace --no-fail-fast

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## demo: the main job: python3 in a gVisor sandbox from the Debian image
demo: setup fixtures build
	@HUTCH_HOME=$(DEMO_HOME) target/release/hutch image ls | grep -q '^debian:latest' || \
	  HUTCH_HOME=$(DEMO_HOME) target/release/hutch image import $(FIXTURES)/debian --name debian
	HUTCH_HOME=$(DEMO_HOME) target/release/hutch run debian -- python3 -c 'import platform; print("hello from python", platform.python_version(), "in a gVisor sandbox")'

## bench: figures against raw runsc (see docs/benchmarks.md)
bench: setup fixtures build
	cargo run --release -p hutch-bench
