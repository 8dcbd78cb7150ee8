"""Fixtures of the fidelity stage tests: the training tests' tiny run directory (a BPE trained
here, three packed domains, hidden-32 Llama models), reused rather than rebuilt."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_demix_training_conftest", Path(__file__).parent.parent / "training" / "conftest.py"
)
_training = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_training)

# Fixtures are collected from this module's globals.
shared_data = _training.shared_data
new_run = _training.new_run
trained_base = _training.trained_base
run_with_base = _training.run_with_base
make_config = _training.make_config


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config():
    """``make_config(root, **dotted_overrides)`` of the training tests' tiny models."""
    return _training.make_config
