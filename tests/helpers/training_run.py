"""The training and fidelity tests' tiny but real run directory: a byte-level BPE trained on a
few hundred KB of varied text (English docstrings, arithmetic, Python source) and three domains
packed with PackedWriter. Built once per session; each test gets its own run root whose data and
tokenizer link to the shared ones, so trained models never leak between tests.

The fixtures are imported into tests/training/conftest.py and tests/fidelity/conftest.py.
"""

from __future__ import annotations

import inspect
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from demix.config import RunConfig, config_from_dict
from demix.rundir import RunDir
from helpers.tiny_data import DOMAINS, pack, train_tokenizer

NewRun = Callable[..., tuple[RunConfig, RunDir]]


def _general_docs() -> list[str]:
    import argparse
    import collections
    import csv
    import email
    import http
    import json
    import logging
    import pathlib
    import string
    import textwrap

    docs = []
    for mod in (argparse, collections, csv, email, http, json, logging, pathlib, string, textwrap):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
            if doc and len(doc) > 80 and ">>>" not in doc:
                docs.append(doc)
    return sorted(set(docs))[:400]


def _math_docs(n: int = 600) -> list[str]:
    rng = random.Random(0)
    docs = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice("+-*")
        val = {"+": a + b, "-": a - b, "*": a * b}[op]
        docs.append(f"Question: what is {a} {op} {b}? Answer: {a} {op} {b} = {val}. So the result is {val}.")
    return docs


def _code_docs() -> list[str]:
    import colorsys
    import fnmatch
    import shlex
    import textwrap

    docs = []
    for mod in (colorsys, fnmatch, shlex, textwrap):
        src = inspect.getsource(mod)
        docs.extend(chunk for chunk in src.split("\n\n\n") if len(chunk) > 40)
    return docs


def make_config(root: Path, **overrides: object) -> RunConfig:
    """A tiny-model config for run root ``root``; overrides are dotted keys (``train.base.tokens``)."""
    data = {
        "output_dir": str(root),
        "data": {"domains": [{"name": d, "source": f"builtin:{d}"} for d in DOMAINS]},
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "seq_len": 32},
        "train": {
            "base": {"tokens": 40 * 8 * 32, "lr": 0.01, "batch_size": 8, "warmup_fraction": 0.1},
            "components": {"tokens": 20 * 8 * 32, "lr": 0.003, "batch_size": 8},
            "reference": {"tokens": 10 * 8 * 32, "lr": 0.003, "batch_size": 8},
            "trained_proxy": {"tokens": 5 * 8 * 32, "lr": 0.003, "batch_size": 8},
            "device": "cpu",
            "heldout_tokens": 2048,
        },
    }
    return config_from_dict(data, [f"{k}={v}" for k, v in overrides.items()])


def _link_shared(shared_data: Path, root: Path) -> None:
    (root / "data").symlink_to(shared_data / "data")
    (root / "tokenizer").symlink_to(shared_data / "tokenizer")


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run root holding `tokenizer/` and `data/<domain>/{train,heldout}`."""
    root = tmp_path_factory.mktemp("shared_run")
    run = RunDir(root)
    docs = {"general": _general_docs(), "math": _math_docs(), "code": _code_docs()}
    tok = train_tokenizer([t for ds in docs.values() for t in ds], vocab_size=400)
    tok.save_pretrained(str(run.tokenizer))
    for domain, texts in docs.items():
        random.Random(1).shuffle(texts)
        n_held = max(8, len(texts) // 10)
        pack(run.domain_data(domain) / "heldout", tok, texts[:n_held])
        pack(run.domain_data(domain) / "train", tok, texts[n_held:])
    return root


@pytest.fixture
def new_run(shared_data: Path, tmp_path: Path) -> NewRun:
    """Factory: a fresh run root (data and tokenizer linked to the shared ones) and its config."""

    def make(name: str = "run", **overrides: object) -> tuple[RunConfig, RunDir]:
        root = tmp_path / name
        root.mkdir()
        _link_shared(shared_data, root)
        return make_config(root, **overrides), RunDir(root)

    return make


@pytest.fixture(scope="session")
def trained_base(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base trained once per session (read-only for tests: copy or link it)."""
    from demix.training import train_base

    root = tmp_path_factory.mktemp("base_run")
    _link_shared(shared_data, root)
    return train_base(make_config(root), RunDir(root), show_progress=False).path


@pytest.fixture
def run_with_base(new_run: NewRun, trained_base: Path) -> NewRun:
    """Factory like ``new_run`` whose run already holds the session's trained base."""

    def make(name: str = "run", **overrides: object) -> tuple[RunConfig, RunDir]:
        config, run = new_run(name, **overrides)
        shutil.copytree(trained_base, run.base)
        return config, run

    return make


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., RunConfig]:
    """``make_config(root, **dotted_overrides)`` of the training tests' tiny models."""
    return make_config
