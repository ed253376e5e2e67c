# content-sync: the commands the README gives. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHON := $(abspath $(PY))
PYTEST_ARGS ?=

.PHONY: help install test lint bench demo opensearch-up opensearch-down reliability clean

help:
	@echo "make install          create $(VENV) with the package and dev tools"
	@echo "make demo             run the demo: local OpenSearch + local feed + content-sync sync/status"
	@echo "make test             the test suite against a real OpenSearch node (OPENSEARCH_VERSION=...)"
	@echo "make lint             ruff + mypy --strict"
	@echo "make reliability      the full crash/fault/hostile-input matrix (RELIABILITY_SEED=...)"
	@echo "make bench            benchmarks under bench/ (minutes; prints ratios against baselines)"
	@echo "make opensearch-up    start a local single-node OpenSearch (prints its URL)"
	@echo "make opensearch-down  stop it"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: install
	scripts/with-opensearch.sh $(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check content_sync tests bench
	$(VENV)/bin/ruff format --check content_sync tests bench
	$(VENV)/bin/mypy --strict

reliability: install
	RELIABILITY_FULL=1 scripts/with-opensearch.sh $(VENV)/bin/pytest -m reliability $(PYTEST_ARGS)

bench: install
	scripts/with-opensearch.sh $(PY) bench/run_all.py

demo: install
	scripts/with-opensearch.sh $(PY) -m content_sync.testing.demo

opensearch-up: install
	@scripts/opensearch.sh up

opensearch-down:
	@scripts/opensearch.sh down

clean:
	scripts/opensearch.sh down || true
	rm -rf $(VENV) .cache build *.egg-info .pytest_cache .mypy_cache .ruff_cache
