"""The chosen mixture: the :class:`~demix.search.files.BestMixture` a search ends with, the
comparison with the baseline mixtures every summary shows, and whether a finished search is
still this config's.

The search ranks component weights; ``best_mixture.json`` records them and the data mixture
they stand for (``data = a @ M``, :mod:`demix.data_mixture`), with tokens and epochs computed
from the data mixture (what a user trains on)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from demix.config import RunConfig
from demix.data_mixture import MixtureMap, baseline_mixtures
from demix.errors import DemixError
from demix.mixtures import mixture_key
from demix.rundir import RunDir
from demix.search.files import (
    DATA_MIXTURE_UNIT,
    Baseline,
    BestMixture,
    ObjectiveSpec,
    PredictorSpec,
    RoundSummary,
    TopK,
)
from demix.search.fitting import Fit
from demix.search.ranking import Ranking, identity_map


def best_mixture(
    config: RunConfig,
    ranking: Ranking,
    fit: Fit,
    token_counts: Mapping[str, float] | None,
    documents: Mapping[str, int] | None,
    rounds: Sequence[RoundSummary],
    components: str | None,
    settings: str | None = None,
    mapping: MixtureMap | None = None,
) -> BestMixture:
    """The record of the last round's selection: the component weights (top-k mean) and the
    data mixture they stand for under ``mapping`` (None: the identity), the budget (tokens and
    epochs of the data mixture), predictions, and the baselines (data mixtures, with the
    component weights standing for each)."""
    s = config.search
    domains = config.data.domain_names
    mapping = mapping or identity_map(domains)
    a = ranking.mean
    data = mapping.to_data(a)
    component_weights = dict(zip(domains, map(float, a)))
    target = s.target_tokens or (int(sum(token_counts[d] for d in domains)) if token_counts else None)
    best = BestMixture(
        component_weights=component_weights, data_mixture=dict(zip(domains, map(float, data))), unit=DATA_MIXTURE_UNIT,
        mapping=mapping.to_dict(), target_tokens=target,
    )
    if token_counts and target:
        # The budget is the data's: a proxy of component weights a stands for training on a @ M.
        best.domain_tokens = {d: int(token_counts[d]) for d in domains}
        best.tokens = {d: int(round(x * target)) for d, x in zip(domains, data)}
        best.epochs = {d: (float(x * target / token_counts[d]) if token_counts[d] else None) for d, x in zip(domains, data)}
    if token_counts and documents:
        best.domain_documents = {d: int(documents[d]) for d in domains}
        best.mean_document_tokens = {d: float(token_counts[d]) / max(1, documents[d]) for d in domains}
    best.predicted = fit.predict(a)
    best.top_k = TopK(
        k=int(ranking.top_k.size),
        pool_size=int(ranking.weights.shape[0]),
        spread={d: {k: float(v[j]) for k, v in ranking.spread.items()} for j, d in enumerate(domains)},
    )
    best.baselines = {
        name: Baseline(b.component_weights, fit.predict(np.array([b.component_weights[d] for d in domains])),
                       b.data_mixture, b.data_target, b.reachable)
        for name, b in baseline_mixtures(mapping, token_counts).items()
    }
    best.objective = ObjectiveSpec(s.objective, dict(s.capability_weights), list(s.constraints))
    best.predictor = PredictorSpec(fit.capabilities.kind, fit.n, s.cv_folds)
    best.rounds = list(rounds)
    best.mixture_key = mixture_key(component_weights)  # the store keys proxies by component weights
    # So `demix run` can tell a search of retrained components from a finished one.
    best.components = components
    # ... and one scored under other evaluation or merge settings (demix.search.settings).
    best.settings = settings
    return best


def comparison_rows(best: BestMixture) -> tuple[list[str], list[list[str]]]:
    """The chosen mixture beside the baselines (natural, uniform): one block of rows ``data
    <domain>`` (the data mixture: token shares to train on), one ``component <domain>`` (the
    component weights of the proxy), then one row per predicted capability with its predictor's
    CV RMSE and CV Spearman (n). A baseline that no proxy reaches (its data mixture has less
    general data than the components hold) is headed ``<name> (nearest reachable)``: its column
    shows the nearest reachable data mixture and what its proxy predicts. A block is left out
    when no column has it (a file of demix < 0.2 has no data mixture; a hand-written one may
    lack component weights). Cells are formatted text; renderers (rich, markdown, html) only
    lay them out."""
    names = ["chosen"] + [n for n in ("natural", "uniform") if n in best.baselines]
    labels = [n if n == "chosen" or best.baselines[n].reachable is not False else f"{n} (nearest reachable)"
              for n in names]
    data: dict[str, Mapping[str, float] | None] = {
        "chosen": best.data_mixture, **{n: b.data_mixture for n, b in best.baselines.items()}}
    comps: dict[str, Mapping[str, float] | None] = {
        "chosen": best.component_weights, **{n: b.component_weights for n, b in best.baselines.items()}}
    header = ["", *labels, "CV RMSE", "CV Spearman (n)"]
    rows: list[list[str]] = []
    for kind, table in (("data", data), ("component", comps)):
        if any(table[n] is not None for n in names):
            rows += [[f"{kind} {d}", *[_cell((table[n] or {}).get(d), 3) for n in names], "", ""] for d in best.domains]
    if best.predicted is None:
        return header, rows
    predicted = {"chosen": best.predicted, **{n: b.predicted for n, b in best.baselines.items()}}
    for c, p in best.predicted.capabilities.items():
        values = [predicted[n].capabilities.get(c) for n in names]
        rho = "undefined" if p.cv_spearman is None else f"{p.cv_spearman:.2f}"
        rows.append([
            f"predicted {c}",
            *[_cell(v.value if v is not None else None, 4) for v in values],
            _cell(p.cv_rmse, 4),
            f"{rho} ({'?' if p.cv_n is None else p.cv_n})",
        ])
    return header, rows


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def search_is_complete(config: RunConfig, run: RunDir) -> bool:
    """True when ``best_mixture.json`` exists and was produced by this config's search plan
    (same domains, rounds, pool size, top-k and objective) on the current base and components
    (same :func:`~demix.checkpoints.components_fingerprint`, and the same training mixture of
    each component, so the same data mixture) with the same scoring settings (same
    :class:`~demix.search.settings.ScoringSettings` fingerprint); files written before a
    fingerprint was recorded pass. A file of demix < 0.2 (component weights only, see
    :attr:`~demix.search.files.BestMixture.legacy`) is never complete."""
    from demix.checkpoints import components_fingerprint
    from demix.search.settings import ScoringSettings

    if not run.best_mixture.is_file():
        return False
    try:
        best = BestMixture.read(run.best_mixture)
    except DemixError:
        return False
    s = config.search
    # A file of demix < 0.2 holds component weights labelled as token shares and no data
    # mixture: the search writes it again (its finished rounds are read back, nothing is evaluated).
    if best.legacy or best.data_mixture is None or best.top_k is None or best.objective is None:
        return False
    if not _same_mapping(config, run, best):
        return False
    return (
        best.domains == config.data.domain_names
        and [r.planned for r in best.rounds] == list(s.rounds)
        and best.top_k.pool_size == s.pool_size
        and best.top_k.k <= s.top_k
        and best.objective.kind == s.objective
        and best.objective.constraints == list(s.constraints)
        and best.objective.capability_weights == dict(s.capability_weights)
        and best.components in (None, components_fingerprint(config, run))
        and best.settings in (None, ScoringSettings.of(config).fingerprint)
        # search.refine on: refined with these refine settings (off: a refined file is complete too).
        and (not s.refine.enabled or (best.refinement or {}).get("settings") == s.refine.model_dump(mode="json"))
        # The chosen mixture's intervals and measured proxy, where the config asks for them.
        and (not s.predictor_intervals or (best.intervals is not None and best.intervals.members == s.predictor_intervals
                                           and best.intervals.level == s.interval_level))
        and (not s.measure_chosen or best.measured is not None)
    )


def _same_mapping(config: RunConfig, run: RunDir, best: BestMixture) -> bool:
    """The file's data mixture was computed from the components' training mixtures this run has now."""
    from demix.training.roles import mixture_map

    if best.mapping is None:
        return False
    try:
        recorded = MixtureMap.from_dict(best.mapping)
        current = mixture_map(config, run)
    except (DemixError, KeyError, TypeError, ValueError, AttributeError):
        return False  # a broken record or config: the search says what is wrong
    return recorded.domains == current.domains and bool(np.allclose(recorded.matrix, current.matrix, rtol=0, atol=1e-9))
