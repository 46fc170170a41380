# One-command set-up: each target creates .venv (pinned by constraints.txt) on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-all bench lint

$(VENV)/.base: pyproject.toml constraints.txt src/m3embed/index/_maxsim.c
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PIP) torch==2.13.0
	$(PIP) -e ".[all]"
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e ".[dev]"
	touch $@

setup: $(VENV)/.dev

demo: $(VENV)/.base  ## the main job, offline, on the embedded default
	$(VENV)/bin/m3embed demo

test: $(VENV)/.dev  ## the default suite (CI runs this)
	$(PY) -m pytest -q

test-all: $(VENV)/.dev  ## default suite plus the slow tests
	$(PY) -m pytest -q -m ""

bench: $(VENV)/.dev
	$(PY) benchmarks/encode_throughput.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks m3testkit
