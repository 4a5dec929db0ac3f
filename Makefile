# recon-audit: `make demo` runs the main job on the embedded default, `make test` the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= out

.PHONY: install services lint typecheck test demo bench clean

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

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: install services lint typecheck
	$(BIN)/pytest

demo: install
	mkdir -p $(OUT)
	$(BIN)/recon-audit selfcheck --device cpu > $(OUT)/selfcheck.json
	$(BIN)/recon-audit simulate --modality mri --pattern variable-density --ratio 0.25 --out $(OUT)/demo/mri
	$(BIN)/recon-audit simulate --modality mri-multicoil --pattern lines --ratio 0.3 --coils 8 --out $(OUT)/demo/mri-multicoil
	$(BIN)/recon-audit simulate --modality ct --image ellipses --angles 50 --out $(OUT)/demo/ct
	$(BIN)/recon-audit inspect examples/unet-mri/model.onnx --manifest examples/unet-mri/manifest.json > $(OUT)/demo/unet-mri-inspect.json
	$(BIN)/recon-audit audit examples/unet-mri/model.onnx --manifest examples/unet-mri/manifest.json --protocol quick --out $(OUT)/demo/audit-unet-mri
	@echo "Demo outputs (JSON summaries, PNG figures, the audit report) are in $(OUT)/demo/"

bench: install
	$(BIN)/python -m benchmarks.radon_vs_skimage
	$(BIN)/python -m benchmarks.operator_throughput
	$(BIN)/python -m benchmarks.attack_overhead

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
