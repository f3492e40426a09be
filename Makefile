# hcld: the two commands of the README, plus a few helpers.
#   make reproduce   run every notebook on the embedded default (synthetic corpus, fbank, quick profile)
#   make test        lint + the test suite (what CI runs)
# Both create the project environment (.venv) on first use, install the package in it and register
# the Jupyter kernel "hcld" from it.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hcld-installed
PROFILE ?= quick
# Extra papermill parameters for `make reproduce`, e.g. ARGS="-p dataset iemocap -p iemocap_root /data/IEMOCAP_full_release"
ARGS   ?=

.PHONY: env reproduce test lint bench kernel clean-runs

env: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "hcld needs Python >= 3.11, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name hcld --display-name "Python (hcld)"
	@touch $(STAMP)

kernel: env
	$(BIN)/python -m ipykernel install --sys-prefix --name hcld --display-name "Python (hcld)"

reproduce: env
	$(BIN)/python -m hcld_lib.batch --profile $(PROFILE) $(ARGS)

lint: env
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

bench: env
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean-runs:
	rm -rf runs results
