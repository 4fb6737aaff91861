# `make run` and `make test` work on a fresh Debian 12 / Ubuntu machine with Rust installed:
# they install the missing system packages (GStreamer and its plugins) first.

SHELL := /bin/bash
CARGO ?= cargo
RUNTIME_PACKAGES := .ci/packages-runtime.txt
BUILD_PACKAGES := .ci/packages-build.txt
ARGS ?=

.PHONY: deps build run test lint clean

deps:
	@.ci/install-packages.sh $(BUILD_PACKAGES) $(RUNTIME_PACKAGES)

build: deps
	$(CARGO) build --release --locked

## Build and serve on http://localhost:8080 (pass more flags with ARGS="--fps 25 ...").
run: build
	./target/release/mcu serve $(ARGS)

## Every test. End-to-end tests run one at a time: each is a whole conference on a 2-core machine.
test: deps
	$(CARGO) build --locked --all-targets
	$(CARGO) test --locked -- --test-threads=1

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

clean:
	$(CARGO) clean
