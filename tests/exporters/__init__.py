"""Tests of demix.exporters against the trainers' own packages (the `.venv-trainers` venv)."""
