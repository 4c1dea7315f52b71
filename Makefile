# edgekit: `make run` and `make test` each create .venv when missing and install everything the project needs.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/default
# Debian packages the tests use (ARM cross build + qemu, WebAssembly toolchain, loopback sshd devices,
# debootstrap for the slow arm64 qemu test, headless Chromium, a PostgreSQL server for the shared search study).
APT_PACKAGES := gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user openssh-server openssh-client debootstrap clang lld wasi-libc chromium postgresql

.PHONY: run test test-all lint format bench bench-deps system-deps install node-deps kernels clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch and torchvision first (a known-good pair), then the rest.
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# apache-tvm (the `tvm` export format) cannot be resolved together with litert-torch (typing_extensions pins), so it
# is installed after the rest without dependency resolution, with the newer typing_extensions tvm-ffi needs
# (litert-torch and ai-edge-litert work with it). Re-runs whenever the main install ran again.
TVM_STAMP := $(VENV)/.installed-tvm
$(TVM_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.15.post2 typing_extensions==4.16.0
	@$(BIN)/python -c "import tvm, tvm_ffi, litert_torch, ai_edge_litert" 2>/dev/null || { echo "tvm: import check failed (run $(BIN)/python -c \"import tvm, litert_torch\")"; exit 1; }
	touch $(TVM_STAMP)

install: $(STAMP) $(TVM_STAMP) system-deps node-deps kernels

# Installs only what is missing, so a machine that has everything pays nothing.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# npm ci also when package-lock.json changed since the last install (npm keeps its own copy in node_modules).
node-deps:
	@if [ -f package.json ] && { [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; }; then \
	  npm ci --silent --no-audit --no-fund || npm install --silent --no-audit --no-fund; fi

run: install
	$(BIN)/edgekit compress --target host --out $(OUT)

test: install
	$(BIN)/pytest -q -x --timeout=900 -n 2 --dist loadfile

test-all: install
	$(BIN)/pytest -q -m '' --timeout=3600

# ruff's rules, and the package's layers (import-linter contracts in pyproject.toml; docs/architecture.md). The code
# is wrapped by hand at 120 columns: `ruff format` is not used.
lint: $(STAMP) $(TVM_STAMP)
	$(BIN)/ruff check toolkit tests benchmarks
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff check --fix toolkit tests benchmarks

# Native kernels (kernels/Makefile): host library + self-test driver, the aarch64 cross build (tests run it under
# qemu-aarch64), and the wasm32 SIMD128 objects when clang can target wasm32.
kernels: system-deps
	$(MAKE) -s -C kernels host aarch64
	-@$(MAKE) -s -C kernels wasm32 2>/dev/null || echo "kernels: wasm32 build skipped (clang --target=wasm32-wasi unavailable)"

# Benchmarks only (never edgekit's dependencies): the real clients and model files some benchmarks judge or read.
#   .venv-bench   RapidOCR 1.4.4 with OpenCV, the client benchmarks/ocr_client.py runs (in a venv of its own)
#   .bench-pkgs   ultralytics (YOLOv8n from its model YAML, exported by its own ONNX exporter), used with .venv's
#                 torch by benchmarks/wild_models.py and task_quality.py (PYTHONPATH, --no-deps: no second torch)
#   .bench-img    scikit-image and its sample photographs (benchmarks/task_quality.py's detector inputs; --no-deps)
#   .bench-models MediaPipe's .tflite files, unpacked from the mediapipe==0.10.14 wheel (pip download, no install)
BENCH_VENV := .venv-bench
bench-deps: $(STAMP)
	@[ -x $(BENCH_VENV)/bin/python ] || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q rapidocr-onnxruntime==1.4.4 opencv-python-headless pillow
	@[ -d .bench-pkgs/ultralytics ] || $(BIN)/pip install -q --target .bench-pkgs --no-deps ultralytics \
	  ultralytics-thop opencv-python-headless polars ultralytics-platform nvidia-ml-py
	@[ -d .bench-img/skimage ] || $(BIN)/pip install -q --target .bench-img --no-deps scikit-image lazy_loader \
	  imageio tifffile
	@mkdir -p .bench-models && [ -f .bench-models/face_detection_short_range.tflite ] || { \
	  d=$$(mktemp -d) && $(BIN)/pip download -q --no-deps mediapipe==0.10.14 -d $$d && \
	  $(BIN)/python -c "import glob, os, sys, zipfile; z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]); \
	    [open(os.path.join('.bench-models', os.path.basename(n)), 'wb').write(z.read(n)) for n in z.namelist() \
	     if n.startswith('mediapipe/modules/') and n.endswith('.tflite')]" $$d && rm -rf $$d; }

clean:
	rm -rf runs build .pytest_cache
