# Developer tasks, in one place. Every target installs what it needs (idempotent).
SHELL := /bin/bash
APT_PACKAGES := runsc busybox-static debootstrap umoci skopeo hyperfine curl python3-venv \
	docker-registry buildah apache2-utils attr libcap2-bin openssl nftables iproute2 conntrack \
	mmdebstrap e2fsprogs
FIXTURES ?= $(HOME)/.cache/hutch/fixtures
DEMO_HOME ?= /tmp/hutch-demo
# The Python SDK conformance suite (tests/python) runs in its own venv.
PYVENV := target/pyvenv

# gVisor: Debian 13's runsc (2024-07: systrap, fast checkpoint) is a static binary that runs
# on Debian 12. Trixie is added as an apt source pinned at 1 (never chosen for anything) with
# runsc alone pinned above bookworm; nothing comes from outside Debian.
TRIXIE_SOURCE := /etc/apt/sources.list.d/hutch-trixie.sources
TRIXIE_PIN := /etc/apt/preferences.d/hutch-trixie
# Debian 12's own runsc (2022-12, ptrace only), unpacked beside it for the side-by-side
# benchmarks and the old-runsc compatibility run (HUTCH_RUNSC=$(OLD_RUNSC)).
OLD_RUNSC := /opt/hutch/runsc-20221219/runsc

.PHONY: setup fixtures build test lint demo bench bench-runsc pytest soak

## setup: system packages (gVisor, fixture tools) and cargo-nextest
setup: $(TRIXIE_PIN) $(OLD_RUNSC)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

$(TRIXIE_PIN):
	printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $(TRIXIE_SOURCE)
	printf 'Package: *\nPin: release n=trixie\nPin-Priority: 1\n\nPackage: runsc\nPin: release n=trixie\nPin-Priority: 990\n' > $@
	apt-get update -qq
	dpkg -s runsc >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null || true

$(OLD_RUNSC): | $(TRIXIE_PIN)
	d=$$(mktemp -d) && cd $$d && chmod 755 $$d && apt-get download -qq runsc=0.0~20221219.0-2+b3 2>/dev/null && \
	  dpkg-deb -x runsc_*.deb x && mkdir -p $(dir $@) && install -m 0755 x/usr/bin/runsc $@ && rm -rf $$d

## fixtures: the busybox, Debian+python3 and oracle (layer edge cases) test images (built offline, cached)
fixtures: setup
	bash fixtures/build-all.sh $(FIXTURES) >/dev/null

build:
	cargo build --release

## test: everything the project checks, against real gVisor sandboxes
test: setup fixtures
	@# runsc's platform is chosen by timing both on this machine, once (cached machine-wide):
	@# time them here, before the parallel tests load the machine.
	cargo build -q -p hutch-cli
	d=$$(mktemp -d) && HUTCH_HOME=$$d target/debug/hutch info | grep -m1 'faster at process' || true; rm -rf $$d
	@# The Debian default image's root filesystem, into the machine's cache once (mmdebstrap).
	d=$$(mktemp -d) && HUTCH_HOME=$$d target/debug/hutch image default >/dev/null; rc=$$?; rm -rf $$d; exit $$rc
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
demo: setup build
	@# The default image (Debian with python3, pip, git...): built with mmdebstrap the first
	@# time (under a minute, progress below), cached machine-wide after that.
	HUTCH_HOME=$(DEMO_HOME) target/release/hutch image default >/dev/null
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
	$(MAKE) $(PYVENV)/.installed
	cargo build --release -p hutch-bench --bin hutch-bench-build-pip
	target/release/hutch-bench-build-pip target/release/hutch
	cargo build --release -p hutch-bench --bin hutch-bench-seed
	target/release/hutch-bench-seed target/release/hutch
	$(MAKE) $(PYVENV)/.installed
	cargo build --release -p hutch-bench --bin hutch-bench-pools
	target/release/hutch-bench-pools target/release/hutch

## bench-runsc: hutch-bench, hutch-bench-runtime and hutch-bench-build with the old runsc
## (2022-12, ptrace) and the new one (2024-07, systrap), into one report (bench/compare-runsc.sh)
bench-runsc: setup fixtures build
	cargo build --release -p hutch-bench --bins
	OLD_RUNSC=$(OLD_RUNSC) bash bench/compare-runsc.sh target/release/hutch target/bench-runsc.md
