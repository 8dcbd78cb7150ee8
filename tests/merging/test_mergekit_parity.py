"""Parity with mergekit 0.1.5 itself, run from its own venv on the same tiny fp32 checkpoints.

Skipped when `.venv-mergekit` is absent (`python benchmarks/mergekit_parity.py` creates it).
"""

from __future__ import annotations

import pytest

from demix.merging.mergekit import mergekit_python
from demix.merging.parity import compare_with_mergekit

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    mergekit_python() is None,
    reason="mergekit venv .venv-mergekit not found (create it: python benchmarks/mergekit_parity.py)",
)]


def test_every_shared_method_matches_mergekit(family, tmp_path):
    base, comps = family
    rows = compare_with_mergekit(base, comps, {"general": 0.5, "math": 0.3, "code": 0.2}, tmp_path)
    results = [r for r in rows if r["compare"] != "seconds"]
    methods = {r["case"].split("(")[0] for r in results}
    assert {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "della", "della_linear",
            "breadcrumbs", "breadcrumbs_ties", "slerp", "multislerp"} <= methods
    for r in results:
        assert r["tensors"].split("/")[0] == r["tensors"].split("/")[1], r  # mergekit wrote every tensor
        if r["compare"] == "max_abs_diff":
            assert r["value"] <= 1e-6 * max(1.0, r["max_abs_ref"]), r
        else:  # kept fractions of random drops (about 27k Bernoulli draws per model)
            assert r["value"] < 0.02, r
