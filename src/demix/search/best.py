"""The chosen mixture: the :class:`~demix.search.files.BestMixture` a search ends with, the
comparison with the baseline mixtures every summary shows, and whether a finished search is
still this config's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from demix.config import RunConfig
from demix.errors import DemixError
from demix.mixtures import mixture_key
from demix.rundir import RunDir
from demix.search.files import (
    TOKEN_SHARE_UNIT,
    Baseline,
    BestMixture,
    ObjectiveSpec,
    PredictorSpec,
    RoundSummary,
    TopK,
)
from demix.search.fitting import Fit
from demix.search.ranking import Ranking, baseline_mixtures


def best_mixture(
    config: RunConfig,
    ranking: Ranking,
    fit: Fit,
    token_counts: Mapping[str, float] | None,
    documents: Mapping[str, int] | None,
    rounds: Sequence[RoundSummary],
    components: str | None,
    settings: str | None = None,
) -> BestMixture:
    """The record of the last round's selection: weights, budget, predictions, baselines."""
    s = config.search
    domains = config.data.domain_names
    w = ranking.mean
    weights = dict(zip(domains, map(float, w)))
    target = s.target_tokens or (int(sum(token_counts[d] for d in domains)) if token_counts else None)
    best = BestMixture(weights=weights, unit=TOKEN_SHARE_UNIT, target_tokens=target)
    if token_counts and target:
        best.domain_tokens = {d: int(token_counts[d]) for d in domains}
        best.tokens = {d: int(round(x * target)) for d, x in zip(domains, w)}
        best.epochs = {d: (float(x * target / token_counts[d]) if token_counts[d] else None) for d, x in zip(domains, w)}
    if token_counts and documents:
        best.domain_documents = {d: int(documents[d]) for d in domains}
        best.mean_document_tokens = {d: float(token_counts[d]) / max(1, documents[d]) for d in domains}
    best.predicted = fit.predict(w)
    best.top_k = TopK(
        k=int(ranking.top_k.size),
        pool_size=int(ranking.weights.shape[0]),
        spread={d: {k: float(v[j]) for k, v in ranking.spread.items()} for j, d in enumerate(domains)},
    )
    best.baselines = {
        name: Baseline(dict(zip(domains, map(float, m))), fit.predict(m))
        for name, m in baseline_mixtures(domains, token_counts).items()
    }
    best.objective = ObjectiveSpec(s.objective, dict(s.capability_weights), list(s.constraints))
    best.predictor = PredictorSpec(fit.capabilities.kind, fit.n, s.cv_folds)
    best.rounds = list(rounds)
    best.mixture_key = mixture_key(weights)
    # So `demix run` can tell a search of retrained components from a finished one.
    best.components = components
    # ... and one scored under other evaluation or merge settings (demix.search.settings).
    best.settings = settings
    return best


def comparison_rows(best: BestMixture) -> tuple[list[str], list[list[str]]]:
    """The chosen mixture beside the baseline mixtures (natural, uniform): one row per domain
    weight, then one per predicted capability with its predictor's CV RMSE and CV Spearman (n).
    Cells are formatted text; renderers (rich, markdown, html) only lay them out."""
    names = ["chosen"] + [n for n in ("natural", "uniform") if n in best.baselines]
    weights = {"chosen": best.weights, **{n: b.weights for n, b in best.baselines.items()}}
    header = ["", *names, "CV RMSE", "CV Spearman (n)"]
    rows = [[f"weight {d}", *[_cell(weights[n].get(d), 3) for n in names], "", ""] for d in best.weights]
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
    (same :func:`~demix.checkpoints.components_fingerprint`) with the same scoring settings (same
    :class:`~demix.search.settings.ScoringSettings` fingerprint); files written before a
    fingerprint was recorded pass."""
    from demix.checkpoints import components_fingerprint
    from demix.search.settings import ScoringSettings

    if not run.best_mixture.is_file():
        return False
    try:
        best = BestMixture.read(run.best_mixture)
    except DemixError:
        return False
    s = config.search
    if best.top_k is None or best.objective is None:
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
    )
