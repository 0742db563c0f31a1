# The two commands a new user needs: `make demo` and `make test`.
# Both set up .venv/ themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.capsv-installed
PYTEST_ARGS ?=

.PHONY: install test test-slow test-long demo bench bench-scale clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TORCH)"
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[test]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m "slow and not long" $(PYTEST_ARGS)

test-long: install
	$(BIN)/python -m pytest -q -m long $(PYTEST_ARGS)

demo: install
	$(BIN)/capsv demo

bench: install
	$(BIN)/python bench/run_all.py

# VoxCeleb-size layouts (hard links into a small synthetic pool) and the scale figures of
# bench/RESULTS.md; ~1.5 GB under SCALE_ROOT. SCALE_ARGS=--quick for a 2 % smoke run.
SCALE_ROOT ?= /tmp/capsv-scale
SCALE_ARGS ?=
bench-scale: install
	$(BIN)/python bench/scale/run.py --root $(SCALE_ROOT) $(SCALE_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
