# edgekit: `make run` and `make test` each create .venv when missing and install everything the project needs.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/default
# Debian packages the tests use (ARM cross build + qemu, WebAssembly toolchain, loopback sshd, headless Chromium).
APT_PACKAGES := gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user openssh-server openssh-client clang lld wasi-libc chromium

.PHONY: run test test-all lint format bench system-deps install node-deps kernels clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch and torchvision first (a known-good pair), then the rest.
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) system-deps node-deps

# Installs only what is missing, so a machine that has everything pays nothing.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

node-deps:
	@if [ -f package.json ] && [ ! -d node_modules ]; then npm ci --silent --no-audit --no-fund || npm install --silent --no-audit --no-fund; fi

run: install
	$(BIN)/edgekit compress --target host --out $(OUT)

test: install
	$(BIN)/pytest -q -x --timeout=900

test-all: install
	$(BIN)/pytest -q -m '' --timeout=3600

lint: $(STAMP)
	$(BIN)/ruff check toolkit tests benchmarks
	$(BIN)/ruff format --check toolkit tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format toolkit tests benchmarks
	$(BIN)/ruff check --fix toolkit tests benchmarks

clean:
	rm -rf runs build .pytest_cache
