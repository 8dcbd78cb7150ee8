"""Parity with mergekit: the same merge by both tools, compared tensor by tensor.

For each case (method, params), demix writes the mergekit config for the same mixture
(:func:`~demix.merging.mergekit.to_mergekit_config`, computing in fp32), mergekit runs it in its
own venv (all cases in one subprocess), demix writes its own merged checkpoint, and the
max absolute difference over all tensors is reported. Used by ``tests/merging`` (when the
mergekit venv exists) and ``benchmarks/mergekit_parity.py``.

Random methods (DARE, DELLA) draw different masks in the two tools (mergekit uses the global
torch RNG, demix a generator per tensor name), so they are compared exactly at ``density: 1``
(no drop; everything else in the method still runs) and, at lower density, by the fraction of
delta elements kept, which must agree in distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from demix.merging.checkpoint import Checkpoint
from demix.merging.mergekit import run_mergekit, write_mergekit_config
from demix.merging.write import write_merged

#: (method, params) compared exactly; the random methods appear at density 1.
EXACT_CASES: list[tuple[str, dict[str, Any]]] = [
    ("linear", {}),
    ("task_arithmetic", {"lambda": 0.8}),
    ("ties", {"density": 0.5}),
    ("ties", {"density": 0.7, "normalize": False, "lambda": 1.2}),
    ("breadcrumbs", {"density": 0.8, "gamma": 0.05}),
    ("breadcrumbs_ties", {"density": 0.8, "gamma": 0.05}),
    ("dare_linear", {"density": 1.0}),
    ("dare_ties", {"density": 1.0}),
    ("della", {"density": 1.0}),
    ("della_linear", {"density": 1.0}),
    ("multislerp", {}),
    ("multislerp", {"use_base": False}),
    ("slerp", {}),
]

#: Random methods compared by the fraction of kept delta elements.
RANDOM_CASES: list[tuple[str, dict[str, Any]]] = [
    ("dare_linear", {"density": 0.5, "rescale": False}),
    ("della_linear", {"density": 0.5, "epsilon": 0.2, "rescale": False}),
]


def _load(path: Path) -> dict[str, torch.Tensor]:
    ck = Checkpoint.open(path)
    return {n: ck.get(n).float() for n in ck.tensors}


def _kept(state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], names: Sequence[str]) -> int:
    """Delta elements a merge kept (nonzero ``state - base``) over the tensors ``names``."""
    return sum(int(((state[n] - base[n]) != 0).sum()) for n in names)


def _case_label(method: str, params: Mapping[str, Any]) -> str:
    return method + ("(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def compare_with_mergekit(
    base_dir: Path,
    components: Mapping[str, Path],
    mixture: Mapping[str, float],
    workdir: Path,
    cases: Sequence[tuple[str, dict[str, Any]]] = EXACT_CASES,
    random_cases: Sequence[tuple[str, dict[str, Any]]] = RANDOM_CASES,
    python: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run every case in both tools; one row per case:
    ``{"case", "compare", "value", "tensors", "max_abs_ref"}``.

    ``compare`` is ``max_abs_diff`` (exact cases) or ``kept_fraction_diff`` (random cases:
    |fraction of delta elements kept by mergekit - by demix|).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    two = dict(list(components.items())[:2])
    two_mix = {d: mixture[d] for d in two}
    s = sum(two_mix.values())
    two_mix = {d: w / s for d, w in two_mix.items()}
    jobs, plan = [], []
    for i, (method, params) in enumerate(list(cases) + list(random_cases)):
        comps, mix = (two, two_mix) if method == "slerp" else (components, mixture)
        cfg = write_mergekit_config(workdir / f"case{i}.yml", base_dir, comps, mix, method, params, dtype="float32")
        jobs.append((cfg, workdir / f"mergekit{i}"))
        plan.append((i, method, params, comps, mix, i >= len(cases)))
    timings = run_mergekit(jobs, python=python)
    base = _load(base_dir)
    rows = []
    for i, method, params, comps, mix, is_random in plan:
        ours_dir = write_merged(base_dir, comps, mix, workdir / f"demix{i}", method, params, dtype="float32", force=True)
        ours, theirs = _load(ours_dir), _load(workdir / f"mergekit{i}")
        common = [n for n in ours if n in theirs]
        if is_random:
            total = sum(base[n].numel() for n in common)
            value = abs(_kept(theirs, base, common) - _kept(ours, base, common)) / total
            compare = "kept_fraction_diff"
        else:
            value = max(float((ours[n] - theirs[n]).abs().max()) for n in common)
            compare = "max_abs_diff"
        rows.append(
            {
                "case": _case_label(method, params),
                "compare": compare,
                "value": value,
                "tensors": f"{len(common)}/{len(ours)}",
                "max_abs_ref": max(float(theirs[n].abs().max()) for n in common),
            }
        )
    rows.append({"case": "mergekit timings", "compare": "seconds", "value": timings, "tensors": "", "max_abs_ref": 0.0})
    return rows
