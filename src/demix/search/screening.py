"""Screening in the search loop (``search.screening``): one step of successive halving per round.

A round's planned proxies that lack a full score are first *screened*, each lm_eval task scored
on a fixed ``fraction`` of its documents (:mod:`demix.evaluation.screening`: the same documents
for every proxy, nested in the full set); only the best ``keep`` of them by screened objective,
and any within ``margin`` of the best, are then scored in full.

Why screened scores are their own proxy kind (``screened@<fraction>``,
:func:`demix.proxy_kind.screened`) and not a flag on a ``merged`` row: every reader of merged
rows (the fit, the evidence, the report, ``demix status``) then sees full scores only, with no
change, and the store's claims, leases and resume work for screens exactly as for full
evaluations (several drivers share a round's screens; a killed search resumes them). The
predictors fit full scores only (measured: ``benchmarks/eval_cost.py --run``, docs/evaluation.md).

Each screened row records the documents it used (``provenance["screening"]``); a screened row
scored with other components or scoring settings is screened again, never reused. The round's
screened objectives and which proxies went on to full scoring are in ``round_<r>/screening.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from demix.config import RunConfig
from demix.errors import DemixError
from demix.executors.base import Executor, evaluate_planned, result_parts
from demix.mixtures import mixture_key
from demix.objectives import objective_values
from demix.proxy_kind import screened
from demix.search.settings import ScoringSettings
from demix.store import Evaluation, Store

log = logging.getLogger("demix.search")

#: provenance key of a screened row: fraction, keep, margin and the documents each benchmark used.
SCREENING_KEY = "screening"

Mixture = dict[str, float]


def check_screening(config: RunConfig) -> None:
    """With ``search.screening`` on, at least one benchmark must be an lm_eval task (held-out
    loss is scored in full in a screen, so there would be nothing to save): checked before any
    proxy is evaluated."""
    if config.search.screening.enabled and not any(b.evaluator == "lm_eval" for b in config.evaluation.benchmarks):
        raise DemixError(
            "search.screening is on, but no benchmark in evaluation.benchmarks is an lm_eval task: a screen scores "
            "held-out loss in full, so there is nothing to screen",
            "turn search.screening.enabled off, or add an lm_eval benchmark (e.g. {name: math_mc, evaluator: lm_eval, "
            "task: demix_math})",
        )


def screened_objectives(rows: Sequence[Evaluation], config: RunConfig, capabilities: Sequence[str]) -> np.ndarray:
    """The search objective of each screened row, among these rows (``rank_mean``: percentile
    ranks within the round's screens); a row missing a capability gets NaN (never kept first)."""
    scores = np.array([[float(r.capabilities.get(c, np.nan)) for c in capabilities] for r in rows], dtype=np.float64)
    if len(rows) == 0:
        return np.zeros(0)
    s = config.search
    bad = ~np.isfinite(scores).all(axis=1)
    # Ranks of NaNs would be meaningless: rank the complete rows, give the rest NaN.
    out = np.full(len(rows), np.nan)
    if (~bad).any():
        out[~bad] = objective_values(s.objective, scores[~bad], list(capabilities), s.capability_weights)
    return out


def screen_round(
    r: int,
    planned: Sequence[Mapping[str, float]],
    *,
    config: RunConfig,
    store: Store,
    executor: Executor,
    full_kind: str,
    capabilities: Sequence[str],
    provenance: Callable[[int, Mixture], dict[str, Any]],
    components: str | None,
    scoring: ScoringSettings,
    directions: Callable[[Mapping[str, float], Mapping[str, bool] | None], Mapping[str, bool | None]],
    on_started: Callable[[int, int], None],
    on_screened: Callable[[Mixture], None],
    path: Path | None = None,
) -> list[int]:
    """Screen the planned mixtures of round ``r`` that have no full score; return the indices
    (into ``planned``, ascending) of the screened survivors, to score in full (mixtures scored
    in full and never screened are not included: there was nothing to decide).

    ``provenance(plan_index, mixture)`` is what a full evaluation of the round records (round,
    plan index, checkpoints, scoring settings); a screened row records it too, plus the
    screening. ``components``: the components fingerprint a reusable screened row must carry.
    ``directions(benchmarks, higher_is_better)``: each benchmark's direction, as a full row records
    it. ``on_started(to_screen, already_screened)`` hears of the round's screened set first."""
    from demix.evaluation.screening import screened_documents, survivors

    sc = config.search.screening
    kind = screened(sc.fraction)
    # The round's screened set: every planned mixture without a full score, and every one
    # screened before (so a resumed round ranks the same set and keeps the same survivors).
    # Mixtures scored in full and never screened (carried-over evidence) are not screened.
    full, screened_before = store.done_keys(full_kind), store.done_keys(kind)
    todo = [i for i, m in enumerate(planned) if mixture_key(m) not in full or mixture_key(m) in screened_before]
    if not todo:
        return []
    on_started(len(todo), sum(mixture_key(planned[i]) in screened_before for i in todo))

    def record(i: int, m: Mixture, result: Any) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
        bench, caps, hib = result_parts(result)
        screening = {"fraction": sc.fraction, "keep": sc.keep, "margin": sc.margin,
                     "documents": screened_documents(result)}
        return bench, caps, {**provenance(i, m), "higher_is_better": directions(bench, hib), SCREENING_KEY: screening}

    # A screen of other components or scoring settings ranks other proxies: screen it again.
    rows = {e.mixture_key: e for e in store.evaluations_done(kind)}
    stale = [i for i in todo if (e := rows.get(mixture_key(planned[i]))) is not None
             and (e.provenance.get("components") != components or scoring.is_stale(e))]
    if stale:
        log.info("round %d: screening %d proxy(ies) again (their screens used other components or settings)", r, len(stale))

        def replace(i: int, m: Mixture, result: Any) -> None:
            bench, caps, prov = record(i, m, result)
            store.replace(m, bench, caps, kind, prov)
            on_screened(m)

        executor.evaluate(((i, {d: float(w) for d, w in planned[i].items()}) for i in stale), replace, screening=sc.fraction)

    def commit(i: int, m: Mixture, result: Any) -> bool:
        bench, caps, prov = record(i, m, result)
        stored = store.complete(m, bench, caps, kind, prov)
        on_screened(m)
        return stored

    evaluate_planned(executor, store, planned, commit, round=r, proxy_kind=kind, screening=sc.fraction,
                     wait_seconds=config.store.wait_seconds, indices=todo)
    rows = {e.mixture_key: e for e in store.evaluations_done(kind)}
    screens = [rows[mixture_key(planned[i])] for i in todo]
    objectives = screened_objectives(screens, config, capabilities)
    kept = [todo[j] for j in survivors(objectives.tolist(), keep=sc.keep, margin=sc.margin)]
    log.info("round %d: screened %d proxy(ies) on %g of the lm_eval documents; %d go on to full scoring",
             r, len(todo), sc.fraction, len(kept))
    if path is not None:
        from demix.fidelity._records import nan_to_none
        from demix.rundir import write_json

        write_json(path, nan_to_none({
            "fraction": sc.fraction, "keep": sc.keep, "margin": sc.margin, "objective": config.search.objective,
            "proxies": [{"plan_index": i, "mixture_key": mixture_key(planned[i]), "screened_objective": float(o),
                         "full": i in kept} for i, o in zip(todo, objectives)],
        }))
    return kept
