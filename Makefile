# produce-sorter: two commands on a fresh Debian / Raspberry Pi OS machine.
#   make demo   set everything up, replay the bundled belt video through the sorting loop
#   make test   set everything up and run every test (lint, type checks, unit, firmware under QEMU)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
SHARED ?= ../shared
C9     ?= $(SHARED)/data/cucumber-9/prototype_1

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# A GPU machine gets the CUDA build of TensorFlow; everything else the CPU build.
TRAIN_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo train-gpu || echo train)

.PHONY: help sysdeps sysdeps-test sysdeps-fleet venv lint test test-fast demo fleet-demo bench firmware clean
help:
	@echo "make demo    replay the bundled belt video through the sorter (bundled model, emulated controller)"
	@echo "make test    lint, type-check and run every test"
	@echo "make fleet-demo  three lanes, a local Prometheus, one controller killed: the alert fires"
	@echo "make bench   measure accuracy and speed (benchmarks/README.md)"
	@echo "make firmware  build the gate controller firmware (.elf/.hex)"

# Installs the named missing packages with apt (one update, one install).
define apt_install
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null \
	    || { echo "error: could not install$$missing with apt-get; install them by hand and re-run" >&2; exit 1; }; \
	fi
endef

# What the demo needs: the AVR toolchain and QEMU to build and run the controller firmware.
sysdeps:
	@missing=""; \
	command -v avr-gcc >/dev/null || missing="$$missing gcc-avr binutils-avr"; \
	[ -f /usr/lib/avr/include/avr/io.h ] || missing="$$missing avr-libc"; \
	command -v qemu-system-avr >/dev/null || missing="$$missing qemu-system-misc"; \
	$(apt_install)

# The packhouse view (docs/fleet.md): Prometheus (promtool) and Alertmanager (amtool).
sysdeps-fleet:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	$(apt_install)

# What the tests need on top: shellcheck and systemd-analyze (deploy/), headless Chromium (dashboard),
# and the packhouse view's Prometheus and Alertmanager.
sysdeps-test: sysdeps sysdeps-fleet
	@missing=""; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	$(apt_install)

$(VENV)/.stamp-$(TRAIN_EXTRA): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$(TRAIN_EXTRA),dev]"
	@touch $@

venv: $(VENV)/.stamp-$(TRAIN_EXTRA)

lint: venv
	$(VENV)/bin/ruff check sorter training firmware_bridge tests benchmarks
	$(VENV)/bin/ruff format --check sorter training firmware_bridge tests benchmarks
	$(VENV)/bin/mypy

test: sysdeps-test venv lint
	$(PY) -m pytest -q

firmware: sysdeps
	$(MAKE) -C firmware_bridge/firmware

demo: sysdeps venv
	$(PY) -m sorter.replay.demo

fleet-demo: sysdeps-fleet venv
	$(PY) -m sorter.replay.fleet

bench: sysdeps venv
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-out fleet-demo-out
	$(MAKE) -C firmware_bridge/firmware clean || true
