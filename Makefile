# serialhub — `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
VENV ?= .venv
PY := $(VENV)/bin/python
BIN_DEBUG := target/debug/serialhub
BIN_RELEASE := target/release/serialhub

.PHONY: help build run test unit e2e bench lint venv clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## release build of the daemon (target/release/serialhub)
	$(CARGO) build --release

run: ## run the daemon with the simulated ESP32 on 127.0.0.1:4001 (esptool --port rfc2217://127.0.0.1:4001 chip-id)
	$(CARGO) run --release -- serve --demo --bind 127.0.0.1

venv: $(VENV)/.installed ## Python venv with esptool, pyserial, esp-idf-monitor from PyPI

$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

test: unit e2e ## everything CI runs: unit tests, then real clients against the real binary

unit: ## Rust unit and property tests
	$(CARGO) test

e2e: venv ## end-to-end tests: esptool, pyserial, esp-idf-monitor against the daemon
	$(CARGO) build
	SERIALHUB_BIN=$(abspath $(BIN_DEBUG)) $(PY) -m pytest -q tests/e2e

bench: venv build ## benchmarks (latency, throughput, CPU, RSS vs ser2net; esptool flash times)
	SERIALHUB_BIN=$(abspath $(BIN_RELEASE)) $(PY) benches/bench.py

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

clean: ## remove build output and the venv
	$(CARGO) clean
	rm -rf $(VENV)
