"""Helpers shared by the tests, their worker scripts and the benchmarks: tiny real models, texts
and run directories built on the fly (nothing is downloaded, nothing is mocked).

pytest puts tests/ on sys.path (``pythonpath`` in pyproject.toml), so test modules and
conftest files import them by name: ``from helpers.models import tiny_llama``. Scripts run
outside pytest (benchmarks, tests/training/_dist_worker.py) put tests/ on sys.path themselves.
"""
