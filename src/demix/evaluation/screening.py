"""Screening: score every proxy of a round on a fixed subset of each lm_eval task's documents,
and the full set only for the proxies whose screened objective is near the round's best
(one step of successive halving).

    subsets = screening_samples(evaluator.harness, fraction=0.25)
    screened = [screen(evaluator, model_for(m), subsets) for m in planned]      # EvalResult each
    keep = survivors([objective(r) for r in screened], keep=0.5, margin=0.0)
    full = {i: evaluator.evaluate(model_for(planned[i])) for i in keep}

The subset of a task is the first ``ceil(fraction x n)`` documents of the SAME seeded permutation
the run's fixed subsets (``limit``) are drawn from, so it is nested in the full set and the same
for every proxy. A screened result records, per lm_eval benchmark, which documents it used
(``details[name]["screened"]``: the document indices, of how many): a screened score is never
mistaken for a full one. Held-out loss benchmarks are scored in full in both passes (they run at
the cost of a bare forward already and are the cheap part of an evaluation).

The search loop screens each round with these when ``search.screening`` is on
(:mod:`demix.search.screening`: screened rows are their own proxy kind, never fitted). The
benchmark ``benchmarks/eval_cost.py`` measures what screening saves and how well the screened
scores rank a round (Spearman against the full scores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from demix.errors import DemixError

if TYPE_CHECKING:
    import torch

    from demix.evaluation.benchmarks import EvalResult
    from demix.evaluation.evaluator import Evaluator
    from demix.evaluation.harness import Harness


def screening_samples(harness: Harness, fraction: float, seed: int | None = None) -> dict[str, list[int]]:
    """{task: sorted document indices} of the screening subset of every leaf task of ``harness``:
    the first ``ceil(fraction x m)`` documents (at least 1) of the seeded permutation whose first
    ``m`` documents are the task's full set."""
    if not 0 < fraction <= 1:
        raise DemixError(f"screening fraction must be in (0, 1], got {fraction}", "use e.g. 0.25 (a quarter of each task's documents)")
    seed = harness.seed if seed is None else seed
    out: dict[str, list[int]] = {}
    for name, task in harness.task_dict["tasks"].items():
        n = len(task.eval_docs)
        m = len(harness.samples[name]) if name in harness.samples else n
        # The same draw as harness._fixed_samples: permutation(n)[:limit].
        order = np.random.default_rng(seed).permutation(n)[:m]
        out[name] = sorted(int(i) for i in order[: max(1, math.ceil(fraction * m))])
    return out


def screen(evaluator: Evaluator, model: torch.nn.Module, samples: dict[str, list[int]]) -> EvalResult:
    """``evaluator.evaluate(model)`` with the lm_eval tasks scored on ``samples`` only; each
    lm_eval benchmark's details name the documents used."""
    result = evaluator.evaluate(model, samples)
    harness = evaluator.harness
    if harness is None:
        return result
    for b in evaluator.benchmarks:
        if b.evaluator == "lm_eval" and b.task in samples:
            full = harness.samples.get(b.lm_task)
            total = len(full) if full is not None else len(harness.task_dict["tasks"][b.lm_task].eval_docs)
            result.details[b.name]["screened"] = {"documents": list(samples[b.lm_task]), "of": total}
    return result


def screened_documents(result: Any) -> dict[str, dict[str, Any]]:
    """``{benchmark: {"documents": [...], "of": n}}`` of a screened result (an EvalResult from
    :func:`screen`, or a worker's plain dict with a ``screened`` entry); ``{}`` for a full one."""
    if isinstance(result, Mapping):
        return {str(k): dict(v) for k, v in (result.get("screened") or {}).items()}
    details = getattr(result, "details", None) or {}
    return {str(name): dict(d["screened"]) for name, d in details.items() if isinstance(d, Mapping) and "screened" in d}


def survivors(objectives: Sequence[float], keep: float = 0.5, margin: float = 0.0) -> list[int]:
    """Indices (ascending) of the proxies to score in full: the best ``ceil(keep x n)`` by screened
    objective (higher is better), and every proxy within ``margin`` of the best (objective units).
    Non-finite objectives are never kept unless nothing else is."""
    if not 0 < keep <= 1:
        raise DemixError(f"screening keep must be in (0, 1], got {keep}", "use e.g. 0.5 (successive halving)")
    if margin < 0:
        raise DemixError(f"screening margin must be >= 0, got {margin}", "use 0 (keep by rank only) or a positive margin")
    values = np.asarray(objectives, dtype=np.float64)
    if len(values) == 0:
        return []
    finite = np.where(np.isfinite(values), values, -np.inf)
    order = np.argsort(-finite, kind="stable")
    top = set(int(i) for i in order[: max(1, math.ceil(keep * len(values)))])
    best = finite[order[0]]
    if np.isfinite(best):
        top |= {int(i) for i in np.flatnonzero(finite >= best - margin)}
    return sorted(top)
