# spanet_pl -- every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[dev]"

.PHONY: help install demo demo-seg demo-det test test-all bench lint clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

install:  ## install spanet_pl (+ test tools) into the current Python environment
	$(PIP_INSTALL)

demo: install  ## the quick start: train spanet_nano on the embedded digits (CPU, 24 epochs, about 2 minutes)
	$(PYTHON) -m spanet_pl fit --config cli_configs/quickstart.yaml

demo-seg: install  ## the segmentation quick start: spanet_nano + Semantic FPN on embedded digit scenes (CPU, < 2 min)
	$(PYTHON) -m spanet_pl fit --config cli_configs/segmentation/quickstart.yaml

# one intra-op thread: on two shared cores OpenMP threads spinning for a busy core made detector steps 5-8x slower
demo-det: install  ## the detection quick start: spanet_nano + Mask R-CNN on embedded digit scenes in COCO format (CPU, < 5 min)
	OMP_NUM_THREADS=1 $(PYTHON) -m spanet_pl fit --config cli_configs/detection/quickstart.yaml

# two pytest workers (pytest-xdist), one intra-op thread each (tests/conftest.py): both cores busy, none oversubscribed
test: install  ## install, then run the test-suite without the tests marked slow (CI; about 2 minutes on 2 cores)
	$(PYTHON) -m pytest -q -m "not slow" -n 2

test-all: install  ## every test, the slow ones too (real fits, DDP, every recipe, every variant, ONNX; see README)
	$(PYTHON) -m pytest -q -n 2

bench: install  ## params / MACs of every variant at 224 (README table)
	$(PYTHON) -m spanet_pl.benchmark table --markdown

lint: install  ## byte-compile everything (catches syntax errors on any Python)
	$(PYTHON) -m compileall -q spanet_pl datamodules tests tools

clean:  ## remove caches and run outputs
	rm -rf .pytest_cache lightning_logs logs build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
