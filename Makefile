# Two entry points do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs demix, runs the embedded DeMix demo
#   make test   -> creates .venv, installs demix with test extras, runs pytest
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
TORCH   = torch==2.13.0

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pin torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[eval,dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/demix demo

test: venv
	$(VENV)/bin/python -m pytest -q -x --timeout=900

clean:
	rm -rf $(VENV) runs
