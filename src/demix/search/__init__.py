"""The DeMix search: evaluate merged proxies for sampled component weights, fit predictors,
rank a candidate pool, pick the mean of the top-k, and repeat in the predicted top region; the
chosen component weights and the data mixture they stand for (:mod:`demix.data_mixture`) go to
``best_mixture.json``.

- :mod:`~demix.search.loop`: :func:`search` (a run directory, on ``executor.kind``) and
  :func:`run_search` (any scorer or executor), the rounds, :class:`SearchEvent`;
- :mod:`~demix.search.fitting`: predictors and their CV reports (:class:`Fit`);
- :mod:`~demix.search.ranking`: the ranked pool, with the baselines' predictions (:class:`Ranking`);
- :mod:`~demix.search.best`: the chosen mixture, its comparison with the baselines, whether a
  finished search is still current;
- :mod:`~demix.search.files`, :mod:`~demix.search.round_files`: the typed run files;
- :mod:`~demix.search.progress`: the live terminal display.
"""

from __future__ import annotations

from demix.data_mixture import baseline_mixtures
from demix.search.best import best_mixture, comparison_rows, search_is_complete
from demix.search.files import (
    DATA_MIXTURE_UNIT,
    Baseline,
    BestMixture,
    ObjectiveSpec,
    Prediction,
    Predictions,
    PredictorSpec,
    RoundSummary,
    TopK,
)
from demix.search.fitting import Fit, fit_all, resolve_directions, training_data
from demix.search.loop import OnEvent, SearchEvent, SearchResult, expected_capabilities, run_search, search
from demix.search.progress import LiveSearchDisplay
from demix.search.ranking import PARETO_CANDIDATES, Ranking, rank_pool
from demix.search.round_files import CandidatePool, CvReport, ParetoFront, RoundPlan, Selection, TargetCv

__all__ = [
    "PARETO_CANDIDATES",
    "DATA_MIXTURE_UNIT",
    "Baseline",
    "BestMixture",
    "CandidatePool",
    "CvReport",
    "Fit",
    "LiveSearchDisplay",
    "ObjectiveSpec",
    "OnEvent",
    "ParetoFront",
    "Prediction",
    "Predictions",
    "PredictorSpec",
    "Ranking",
    "RoundPlan",
    "RoundSummary",
    "SearchEvent",
    "SearchResult",
    "Selection",
    "TargetCv",
    "TopK",
    "baseline_mixtures",
    "best_mixture",
    "comparison_rows",
    "expected_capabilities",
    "fit_all",
    "rank_pool",
    "resolve_directions",
    "run_search",
    "search",
    "search_is_complete",
    "training_data",
]
