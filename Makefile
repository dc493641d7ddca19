# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SAMPLE := data/sample/fer2013_sample.csv.gz
DEMO_DATA := prepared/sample
DEMO_RUN := runs/demo
DEMO_PHOTO := data/sample/astronaut.jpg
BUNDLED_MODEL := fertrain/assets/model.keras

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,onnx]"
	touch $(STAMP)

# The demo run directory is the demo's own: rerunning `make demo` replaces it. The demo ends with the
# quickstart model trained just now beside the bundled model, both scored on the sample's test faces.
demo: install
	$(BIN)/fertrain prepare $(SAMPLE) --out $(DEMO_DATA)
	rm -rf $(DEMO_RUN)
	$(BIN)/fertrain train --config configs/quickstart.yaml --data $(DEMO_DATA) --run-dir $(DEMO_RUN)
	$(BIN)/fertrain evaluate $(DEMO_RUN) --data $(DEMO_DATA) --split test
	$(BIN)/fertrain predict $(BUNDLED_MODEL) $(DEMO_PHOTO) --detect-faces --annotate $(DEMO_RUN)/annotated
	$(BIN)/fertrain report $(DEMO_RUN) --data $(DEMO_DATA) --compare $(BUNDLED_MODEL)
	@echo "  (the sample's test faces are FER2013 PublicTest faces that neither model trained on; data/README.md)"
	@echo "report: $(DEMO_RUN)/report.html (and report.md)"
	@echo "annotated photo: $(DEMO_RUN)/annotated/$(notdir $(DEMO_PHOTO))"

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check fertrain tests data/sample benchmarks
	$(BIN)/ruff format --check fertrain tests data/sample benchmarks

# Measures fertrain against the notebook way and a hand-written PyTorch loop (about 7 minutes on
# 2 cores) and rewrites the measured block of benchmarks/results.md.
bench: install
	$(BIN)/python -m pip install --quiet -e ".[dev,onnx,torch]"
	$(BIN)/python benchmarks/write_results.py

clean:
	rm -rf $(VENV) prepared runs
