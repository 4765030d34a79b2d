# Ratchet: two commands for a fresh clone.
#   make demo   install, then validate -> version -> pretrain -> fine-tune -> evaluate ->
#               register -> gate -> build a Bento on SST-2, and smoke-test the served model
#   make test   install with test extras, lint, type-check, run the test suite
# Versions come from constraints.txt (the resolved lock), so every clone installs the same set.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-ner test lint typecheck pytest lock clean-state help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[test]'
	@touch $@

install: $(STAMP)  ## create .venv and install the pinned set

demo: install  ## run the retrain flow end to end on SST-2 with the demo profile, then serve a request
	$(BIN)/ratchet demo

demo-ner: install  ## add the CoNLL-2003 NER model beside SST-2 (once), retrain it with its demo profile, serve a request
	test -f pipelines/conll/params.yaml || $(BIN)/ratchet new conll --task token-classification \
	    --data ../shared/data/conll2003 --config configs/conll.yaml
	$(BIN)/ratchet --model conll demo

lint: install
	$(BIN)/ruff check cli components flows serving tests benchmarks
	$(BIN)/ruff format --check cli components flows serving tests benchmarks

typecheck: install
	$(BIN)/mypy cli components flows serving

pytest: install
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

test: lint typecheck pytest  ## lint, type-check and run the tests

lock:  ## re-resolve the dependency set into constraints.txt (needs the registries)
	rm -rf /tmp/ratchet-lock && $(PYTHON) -m venv /tmp/ratchet-lock
	/tmp/ratchet-lock/bin/pip install --quiet --upgrade pip
	/tmp/ratchet-lock/bin/pip install --quiet 'torch==2.13.0' -e '.[test,bench]'
	/tmp/ratchet-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' > constraints.txt

clean-state:  ## delete the state folder (MLflow store, Prefect home, Bentos, DVC remote)
	rm -rf .ratchet
