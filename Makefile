# serialhub — `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
VENV ?= .venv
PY := $(VENV)/bin/python
BIN_DEBUG := target/debug/serialhub
BIN_RELEASE := target/release/serialhub

.PHONY: help build run test unit e2e browser esptools labgrid platformio espflash bench soak lint venv clean pi pi-check deb deb-armhf check-package install cargo-deb

PI_TARGET := arm-unknown-linux-musleabihf
PI_BIN := target/$(PI_TARGET)/release/serialhub
PREFIX ?= /usr
DESTDIR ?=

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## release build of the daemon (target/release/serialhub)
	$(CARGO) build --release

run: ## the daemon with the simulated ESP32 on 127.0.0.1:4001 and the portal on http://127.0.0.1:8080
	$(CARGO) run --release -- serve --demo --bind 127.0.0.1 --http 127.0.0.1:8080

venv: $(VENV)/.installed ## Python venv with esptool, pyserial, esp-idf-monitor from PyPI

$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

test: unit e2e ## everything CI runs: unit tests, then real clients against the real binary

unit: ## Rust unit and property tests
	$(CARGO) test

browser: ## headless chromium and curl for the portal's end-to-end tests (Debian packages)
	@command -v chromium >/dev/null && command -v curl >/dev/null || { \
	  s=$$([ "$$(id -u)" = 0 ] || echo sudo); $$s apt-get update -q && \
	  $$s apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends chromium curl; }

# The esptool releases people actually run besides the newest (in .venv): ESP-IDF 4.4's 3.3,
# PlatformIO's espressif32 6.x bundle 4.5.1, the last 4.x 4.8.1; each in its own venv. And
# 5.3.1, the first to tell native USB by VID/PID alone, before 5.6 capped the ROM's blocks on
# a port without one (tests/e2e/test_native_usb_sims.py).
ESPTOOL_VERSIONS ?= 3.3 4.5.1 4.8.1 5.3.1

esptools: $(foreach v,$(ESPTOOL_VERSIONS),.venv-esptool/$(v)/.installed) ## esptool 3.3, 4.5.1, 4.8.1, 5.3.1 in venvs of their own

.venv-esptool/%/.installed:
	python3 -m venv .venv-esptool/$*
	.venv-esptool/$*/bin/pip install --quiet --disable-pip-version-check esptool==$*
	touch $@

# labgrid (coordinator, exporter, client) from PyPI, in a venv of its own (it brings its own
# pyserial fork); microcom (Debian) for `labgrid-client console`.
labgrid: .venv-labgrid/.installed ## labgrid from PyPI for the lab tests

.venv-labgrid/.installed:
	python3 -m venv .venv-labgrid
	.venv-labgrid/bin/pip install --quiet --disable-pip-version-check labgrid
	@command -v microcom >/dev/null || { s=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$s apt-get update -q && $$s apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends microcom; }
	touch $@

# PlatformIO Core from PyPI, in a venv of its own, for `pio device monitor` over RFC 2217
# (tests/e2e/test_recipes.py); no platform or toolchain is installed.
PLATFORMIO_VERSION := 6.2.0
platformio: .venv-platformio/.installed ## PlatformIO Core (pio) from PyPI for the recipe tests

.venv-platformio/.installed:
	python3 -m venv .venv-platformio
	.venv-platformio/bin/pip install --quiet --disable-pip-version-check platformio==$(PLATFORMIO_VERSION)
	touch $@

# espflash (crates.io), built once into target/espflash for the pty-link test.
ESPFLASH_VERSION := 4.5.0
espflash: target/espflash/bin/espflash ## espflash from crates.io for the end-to-end tests

target/espflash/bin/espflash:
	cargo install --quiet --locked espflash --version $(ESPFLASH_VERSION) --root target/espflash

e2e: venv browser esptools labgrid platformio espflash ## end-to-end tests: esptool (five releases), pyserial, esp-idf-monitor, labgrid, PlatformIO, curl, chromium against the daemon
	$(CARGO) build
	SERIALHUB_BIN=$(abspath $(BIN_DEBUG)) $(PY) -m pytest -q tests/e2e

# BENCH_ARGS: a part of the run while developing, e.g.
#   make bench BENCH_ARGS="--only matrix --matrix-kib 64 --bauds 921600 --out /tmp/bench.md"
BENCH_ARGS ?=

bench: venv build $(VENV)/.bench-installed ## benchmarks vs ser2net, hotplug, esptool matrix (socket://, rfc2217://, esp_rfc2217_server, ser2net) -> docs/benchmarks.md
	SERIALHUB_BIN=$(abspath $(BIN_RELEASE)) $(PY) benches/bench.py $(BENCH_ARGS)

$(VENV)/.bench-installed: benches/requirements.txt $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r benches/requirements.txt
	touch $@

# SOAK_ARGS: e.g. a short run while developing: make soak SOAK_ARGS="--seconds 120"
SOAK_ARGS ?=

soak: venv build ## an hour of 921600-baud traffic through three devices, clients coming and going -> docs/soak.md
	SERIALHUB_BIN=$(abspath $(BIN_RELEASE)) $(PY) benches/soak.py $(SOAK_ARGS)

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

pi: ## static ARMv6 binary for a Pi Zero (target/arm-unknown-linux-musleabihf/release/serialhub); installs missing toolchain pieces
	packaging/build-pi.sh

pi-check: pi venv ## prove the ARMv6 binary works: under qemu-arm -cpu arm1176, esptool flashes and verifies its simulated chip
	$(PY) packaging/pi_check.py $(abspath $(PI_BIN))

cargo-deb:
	@command -v cargo-deb >/dev/null || $(CARGO) install --locked --quiet cargo-deb

deb: build cargo-deb ## Debian package for this machine (amd64): target/debian/serialhub_*.deb
	$(CARGO) deb --no-build

deb-armhf: pi cargo-deb ## Debian package with the static ARMv6 binary (armhf, any Raspberry Pi OS 32-bit)
	$(CARGO) deb --no-build --no-strip --target $(PI_TARGET)

check-package: deb ## check the .deb: file list, conffile, scripts; install and purge in a scratch Debian root; systemd-analyze verify
	packaging/check_package.sh $$(ls -t target/debian/serialhub_*_amd64.deb | head -1)

install: build ## install binary, config (kept if present), unit and docs under $(DESTDIR)$(PREFIX)
	install -D -m 755 $(BIN_RELEASE) $(DESTDIR)$(PREFIX)/bin/serialhub
	test -e $(DESTDIR)/etc/serialhub/serialhub.toml || install -D -m 644 conf/serialhub.toml $(DESTDIR)/etc/serialhub/serialhub.toml
	install -D -m 644 packaging/serialhub.service $(DESTDIR)/lib/systemd/system/serialhub.service
	install -D -m 644 README.md $(DESTDIR)$(PREFIX)/share/doc/serialhub/README.md

clean: ## remove build output and the venv
	$(CARGO) clean
	rm -rf $(VENV) .venv-pi .venv-esptool .venv-labgrid .venv-platformio
