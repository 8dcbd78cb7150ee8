# Two entry points do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs demix, runs the embedded DeMix demo
#   make test   -> creates .venv (+ .venv-mergekit for the parity tests), installs demix with test extras,
#                  runs `make lint` (ruff, mypy), then pytest
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
TORCH   = torch==2.13.0

.PHONY: venv demo lint test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pin torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[eval,dev]'
	touch $@

venv: $(VENV)/.installed

# mergekit in its own venv (its pins may clash with demix's): the merge-parity tests compare
# demix's merge methods with mergekit's on the same checkpoints.
MERGEKIT_VENV ?= .venv-mergekit
$(MERGEKIT_VENV)/.installed:
	$(PYTHON) -m venv $(MERGEKIT_VENV)
	$(MERGEKIT_VENV)/bin/pip install -q --upgrade pip
	$(MERGEKIT_VENV)/bin/pip install -q $(TORCH) mergekit==0.1.5
	touch $@

demo: venv
	$(VENV)/bin/demix demo

# Lint first: ruff and mypy report in about a minute, before the much longer test suite.
lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

test: lint $(MERGEKIT_VENV)/.installed
	$(VENV)/bin/python -m pytest -q --timeout=900

clean:
	rm -rf $(VENV) $(MERGEKIT_VENV) runs
