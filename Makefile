# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SAMPLE := data/sample/fer2013_sample.csv.gz
DEMO_DATA := prepared/sample

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/fertrain prepare $(SAMPLE) --out $(DEMO_DATA)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check fertrain tests
	$(BIN)/ruff format --check fertrain tests

clean:
	rm -rf $(VENV) prepared runs
