# `make test` on a fresh machine: builds .venv, installs torch 2.13.0 (the CPU wheel on disk) first so the
# open torch range never pulls a CUDA build, then s3pipes with its test extra, then runs the suite.
# `make demo` does the same with the lighter demo extra, then runs `s3pipes demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test check demo bench
install: $(VENV)/.installed

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	touch $@

$(VENV)/.installed: pyproject.toml Makefile $(VENV)/.torch
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.demo: pyproject.toml Makefile $(VENV)/.torch
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

check: install
	$(BIN)/pip check

test: install
	$(BIN)/python -m pytest -q

demo: $(VENV)/.demo
	$(BIN)/s3pipes demo

# The benchmark against the peers (benchmarks/run.py; BENCH_ARGS=--quick for small sizes). Installs the
# bench extra (with torch already in place, so pip keeps it) and nginx-light via apt-get when root.
bench: install
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
