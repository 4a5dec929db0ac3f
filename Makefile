# recon-audit: `make demo` runs the main job on the embedded default, `make test` the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= out
#: pytest-xdist processes for `make test` (one torch thread each: tests/conftest.py); 1: serial
TEST_WORKERS ?= auto

.PHONY: install services lint typecheck pytest test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/ensure-system-deps.sh
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required (set PYTHON=...)"; exit 2; }
	scripts/ensure-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

services:
	scripts/ensure-services.sh
	scripts/ensure-system-deps.sh --test

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

#: mypy beside the suite (one core, while pytest's workers leave some of the two idle)
test: install lint
	$(MAKE) --no-print-directory -j2 typecheck pytest

pytest: install services
	$(BIN)/pytest $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

demo: install
	mkdir -p $(OUT)/demo
	$(BIN)/recon-audit selfcheck --device cpu > $(OUT)/selfcheck.json
	$(BIN)/python scripts/demo.py --data-dir $(OUT)/demo-service

bench: install
	$(BIN)/python -m benchmarks.radon_vs_skimage
	$(BIN)/python -m benchmarks.operator_throughput
	$(BIN)/python -m benchmarks.attack_overhead

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
