"""Fixtures of the training tests: the tiny run directory of helpers/training_run.py (a BPE
trained here, three packed domains, hidden-32 Llama configs)."""

from __future__ import annotations

# Fixtures are collected from this module's globals.
from helpers.training_run import new_run, run_with_base, shared_data, trained_base  # noqa: F401
