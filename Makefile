# labelloop — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
LS_VENV := .venv-labelstudio
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_VERSION := 0.13.9
export LABELLOOP_LABEL_STUDIO_VENV ?= $(CURDIR)/$(LS_VENV)

.PHONY: help venvs chromium demo up test test-fast bench bench-serving bench-rescore bench-add bench-s3 bench-models bench-al bench-quality lock clean

help:
	@echo "make demo   set up (venvs) and run the whole loop once on the digits starter"
	@echo "make up     start Label Studio + service + scheduler for real annotators"
	@echo "make test   set up and run the test suite (starts its own Label Studio)"
	@echo "make bench  benchmarks (serving, re-scoring, adding images, model families; active learning: hours) -> bench/results/"
	@echo "make lock   re-resolve requirements*.lock from pyproject.toml"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "uv==$(UV_VERSION)"

# The project venv, exactly as locked, byte-compiled once (PYTHONDONTWRITEBYTECODE=1 is
# set on these machines: without .pyc files every process pays 15-19 s of imports).
$(VENV)/.installed: requirements.lock | $(UV)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(UV) pip sync --quiet --python $(VENV)/bin/python --compile-bytecode requirements.lock
	touch $@

# labelloop itself, editable (its console script and package metadata).
$(VENV)/.project: pyproject.toml $(VENV)/.installed
	$(UV) pip install --quiet --python $(VENV)/bin/python --no-deps --compile-bytecode -e .
	touch $@

# Label Studio pins Django and friends: it lives in a venv of its own.
$(LS_VENV)/.installed: requirements-labelstudio.lock | $(UV)
	rm -rf $(LS_VENV)
	$(PYTHON) -m venv $(LS_VENV)
	$(UV) pip sync --quiet --python $(LS_VENV)/bin/python --compile-bytecode requirements-labelstudio.lock
	touch $@

venvs: $(VENV)/.project $(LS_VENV)/.installed

demo: venvs
	$(VENV)/bin/labelloop demo

up: venvs
	$(VENV)/bin/labelloop up

# The dashboard's test renders the page in a real headless browser: Debian's chromium,
# installed when missing (as root, or with sudo; ~21 s on a fresh Debian machine).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (the dashboard test renders the page in it) ..."; \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	  else \
	    echo "chromium is missing and cannot be installed from here (not root, no password-less sudo):" \
	         "run 'apt-get install chromium' as root, then make test again" >&2; exit 1; \
	  fi; }

test: venvs chromium
	$(VENV)/bin/python -m pytest

test-fast: venvs chromium
	$(VENV)/bin/python -m pytest -m "not e2e"

# Benchmarks are not tests: they measure, print ratios and write bench/results/*.json.
# bench-al with no arguments: 5 seeds to 400 labels at the pipeline's 60 epochs (~2.5 h on 2
# cores), then the from-scratch row (margin from zero labels, evaluation labels counted);
# the committed results are `make bench-al BENCH_AL_ARGS="--epochs 20"` (~95 min + the row).
BENCH_AL_ARGS ?=

bench: bench-serving bench-rescore bench-add bench-s3 bench-models bench-al bench-quality

# The service against a one-process reference server, in both shapes, batching on and off,
# /predict, py-spy profiles, then the backbone model (~10 min; the first time plus the
# models' training). Then production capture's cost on latency (capture off vs on; the
# `capture` key of serving.json).
bench-serving: $(VENV)/.project
	$(VENV)/bin/python -m bench.serving
	$(VENV)/bin/python -m bench.serving --capture

# A 10,000-task pool re-scored and pushed into a real Label Studio (margin and diverse_margin).
bench-rescore: venvs
	$(VENV)/bin/python -m bench.rescore

# 100 new images added to a 1,000- and a 10,000-image workspace, side by side (~5 min).
bench-add: $(VENV)/.project
	$(VENV)/bin/python -m bench.add_images

# The same 500 images imported from a local folder and from an S3 prefix (moto on loopback).
bench-s3: $(VENV)/.project
	$(VENV)/bin/python -m bench.s3_import

# small_cnn and a frozen MobileNetV3Small (96 px) side by side: training s per 100 images,
# inference and preprocessing ms per image (~2 min). The service with the backbone model
# (batching on and off at 64 clients) is part of bench-serving.
bench-models: $(VENV)/.project
	$(VENV)/bin/python -m bench.models

bench-al: $(VENV)/.project
	$(VENV)/bin/python -m bench.active_learning $(BENCH_AL_ARGS)
	$(VENV)/bin/python -m bench.active_learning --from-scratch $(BENCH_AL_ARGS)

# Label quality: suspects caught and reviews spent, accuracy at equal cost, a rare class with
# and without class balance (5 seeds, digits, a linear head on the pixels: minutes).
bench-quality: $(VENV)/.project
	$(VENV)/bin/python -m bench.label_quality

lock: | $(UV)
	$(UV) pip compile --quiet pyproject.toml --extra test --extra bench --python-version 3.11 -o requirements.lock
	printf 'label-studio==1.23.2\n' | $(UV) pip compile --quiet - --python-version 3.11 -o requirements-labelstudio.lock

clean:
	rm -rf $(VENV) $(LS_VENV) $(TOOLS) .labelloop .pytest_cache bench/.work
