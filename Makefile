# BTFM developer and demo targets. Everything installs into ./.venv from this repo's own files.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
DEMO_DIR ?= demo_run

.PHONY: help venv test lint demo bench clean train-demo bench-preprocessing evaluate

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

venv: $(VENV)/.installed  ## create .venv with pinned dependencies and BTFM (editable)

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VPY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: venv  ## run the whole test suite (network disabled)
	$(VPY) -m pytest

lint: venv  ## ruff, then mypy --strict on btfm_core and btfm_infer
	$(VPY) -m ruff check .
	$(VPY) -m mypy btfm_core btfm_infer

demo: venv  ## run the full chain on the embedded Belgian sample into $(DEMO_DIR)/
	bash scripts/demo.sh $(DEMO_DIR)

clean:  ## remove the demo output and caches (keeps .venv)
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache

bench: venv  ## product path: infer_all_tiles end to end vs the seed's algorithm (v1.0) and the reference's (v1.1, v2); px/s, useful GFLOP/s, % of measured peak (5-10 min on 2 cores)
	$(VPY) scripts/bench_product.py

train-demo: venv  ## re-train checkpoints/btfm_demo.pt (needs ../shared/data)
	bash scripts/train_demo.sh

bench-preprocessing: venv  ## preprocessing rehearsal (1000² px ROI, 70 S2 + 60 S1 days, loopback COGs) vs odc-stac: time, bytes, RSS, disk, pixel agreement
	$(VPY) scripts/bench_preprocessing.py

evaluate: venv  ## downstream evaluation of the demo checkpoint on the sample labelled sets (needs ../shared/data)
	bash scripts/run_evaluations.sh
