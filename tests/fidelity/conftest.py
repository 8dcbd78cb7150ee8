"""Fixtures of the fidelity stage tests: the training tests' tiny run directory (a BPE trained
here, three packed domains, hidden-32 Llama models), reused rather than rebuilt."""

from __future__ import annotations

# Fixtures are collected from this module's globals.
from helpers.training_run import new_run, run_with_base, shared_data, tiny_config, trained_base  # noqa: F401
