# `make run` and `make test` work on a fresh Debian 12 / Ubuntu machine with Rust installed:
# they install the missing system packages (GStreamer and its plugins) first.

SHELL := /bin/bash
CARGO ?= cargo
RUNTIME_PACKAGES := .ci/packages-runtime.txt
BUILD_PACKAGES := .ci/packages-build.txt
TEST_PACKAGES := .ci/packages-test.txt
# WebRTC clients written elsewhere (aiortc, FFmpeg 9 with its whip muxer) for tests/whip.rs.
PYENV := target/pyenv
ARGS ?=

.PHONY: deps test-deps build run test test-rust test-browser test-rootfs lint clean

deps:
	@.ci/install-packages.sh $(BUILD_PACKAGES) $(RUNTIME_PACKAGES)

# Browser tests need Chromium, gst-launch and Node.js with npm (Debian's, unless one is installed);
# the WHIP/WHEP tests a Python venv with aiortc and imageio-ffmpeg (PyPI).
test-deps: deps
	@.ci/install-packages.sh $(TEST_PACKAGES)
	@command -v npm >/dev/null || .ci/install-packages.sh .ci/packages-node.txt
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	@test -x $(PYENV)/bin/python || python3 -m venv $(PYENV)
	$(PYENV)/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt

build: deps
	$(CARGO) build --release --locked --bin mcu

## Build and serve on http://localhost:8080 (pass more flags with ARGS="--fps 25 ...").
run: build
	./target/release/mcu serve $(ARGS)

## Every test, on one release build: the binary the tests exercise is the one the Docker image
## ships and the one checked in a Debian root. End-to-end tests run one at a time: each is a
## whole conference on a 2-core machine. (For a quick debug-build loop: cargo test.)
test: test-deps
	$(CARGO) build --release --locked --workspace --all-targets
	$(MAKE) test-rust test-browser test-rootfs

test-rust:
	$(CARGO) test --release --locked --workspace -- --test-threads=1

## Headless Chromium through the web client (screenshots land in target/browser-artifacts/).
test-browser:
	cd tests/browser && MCU_BIN=$(CURDIR)/target/release/mcu npm test

## The container's runtime without a Docker engine: a debootstrap Debian 12 root provisioned as
## the Dockerfile does, running doctor, a server and a probe (cached in target/rootfs/).
test-rootfs:
	.ci/rootfs-check.sh target/release/mcu

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
