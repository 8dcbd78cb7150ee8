"""What the report shows, read from one run directory: :class:`RunData` and :func:`load_run`.

This is the one module of the report that reads the run's files, each with the typed reader of
the stage that writes it (:mod:`demix.search.files`, :mod:`demix.search.round_files`,
:mod:`demix.fidelity.files`, :mod:`demix.fidelity.audit_report`, :func:`demix.rundir.read_timings`),
plus the out-of-fold predictions the predictor-check figure needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from demix.config import RunConfig, load_config
from demix.data_mixture import MixtureMap
from demix.errors import DemixError
from demix.rundir import RunDir, read_timings
from demix.search.files import BestMixture, ObjectiveSpec, Predictions, PredictorSpec, TopK
from demix.search.round_files import CandidatePool, CvReport, ParetoFront, Selection

if TYPE_CHECKING:  # imported where read: demix.fidelity pulls in scipy
    from demix.fidelity.audit_report import AuditReport
    from demix.fidelity.files import FidelityResults, FidelityScores
    from demix.search.fitting import TargetPredictors

log = logging.getLogger("demix.report")
T = TypeVar("T")

#: The baseline mixtures the report compares with the chosen one, in its order.
BASELINES = ("natural", "uniform")

# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class StageTime:
    """Wall time of a stage in the latest invocation that ran it (``timings.json``)."""

    stage: str
    seconds: float
    started: Any


@dataclass
class RunData:
    """Everything the report shows, read from one run directory."""

    run: RunDir
    config: RunConfig
    best: BestMixture
    """``best_mixture.json`` of a finished search (predictions, top-k, objective and predictor set)."""
    evaluations: list[Any]
    """The store's finished evaluations of merged proxies (:class:`demix.store.Evaluation`)."""
    cv_rounds: list[CvReport]
    """``cv.json`` of rounds 0, 1, ... (up to the first round without one)."""
    pool: CandidatePool | None
    """The last round's candidate pool."""
    pareto: ParetoFront | None
    """The last round's Pareto front."""
    stage_times: list[StageTime]
    audit: AuditReport | None
    audit_error: str | None
    """Why there is no audit, when there is none."""
    fidelity: FidelityResults | None
    """``fidelity/fidelity.json``; None when the fidelity stage has not run."""
    pareto_over: int | None = None
    """Candidates (best-ranked first) the Pareto front was computed over (selection.json)."""
    fidelity_scores: FidelityScores | None = None
    """``fidelity/scores.json`` (every model's scores per reference mixture); None when absent."""
    last_predictors: TargetPredictors | None = None
    """The last round's capability predictors (``predictors/capabilities``); None when absent."""

    @property
    def domains(self) -> list[str]:
        return self.best.domains

    @property
    def capabilities(self) -> list[str]:
        return list(self.predictions.capabilities)

    # The parts of best_mixture.json that only a search writes; load_run refuses a file without them.
    @property
    def predictions(self) -> Predictions:
        return _searched(self.best.predicted)

    @property
    def top_k(self) -> TopK:
        return _searched(self.best.top_k)

    @property
    def objective(self) -> ObjectiveSpec:
        return _searched(self.best.objective)

    @property
    def predictor(self) -> PredictorSpec:
        return _searched(self.best.predictor)

    @property
    def component_weights(self) -> dict[str, dict[str, float]]:
        """Component weights (merge coefficients) of the chosen, natural and uniform mixtures
        (those the file holds), in that order."""
        b = self.best
        out = {} if b.component_weights is None else {"chosen": b.component_weights}
        out.update({n: b.baselines[n].component_weights for n in BASELINES if n in b.baselines})
        return out

    @property
    def data_mixtures(self) -> dict[str, dict[str, float]] | None:
        """Data mixtures (token shares of the training data) of the chosen, natural and uniform
        mixtures, in that order; a baseline not reachable is at its nearest reachable data
        mixture. None when no data mixture is known (a file of demix < 0.2)."""
        b = self.best
        if b.data_mixture is None:
            return None
        out = {"chosen": b.data_mixture}
        out.update({n: dm for n in BASELINES if n in b.baselines and (dm := b.baselines[n].data_mixture) is not None})
        return out

    @property
    def mapping(self) -> MixtureMap | None:
        """Component weights -> data mixture as ``best_mixture.json`` records it (None when it does not)."""
        if self.best.mapping is None:
            return None
        try:
            return MixtureMap.from_dict(self.best.mapping)
        except (DemixError, KeyError, TypeError, AttributeError) as exc:
            log.warning("report: the mapping of %s cannot be read (%s); data-mixture spread left out",
                        self.best.path or "best_mixture.json", exc)
            return None

    @property
    def data_spread(self) -> dict[str, float | None]:
        """Standard deviation of each domain's data share over the top-k candidates, from their
        component-weight spread through the mapping: a share affine in one component weight
        (``offset + slope x a``, every domain of the standard recipe) has std ``|slope| x std(a)``;
        one that mixes several weights needs their covariance, which the file does not hold (None)."""
        mapping, spread = self.mapping, self.top_k.spread
        if mapping is None or not spread:
            return {}
        out: dict[str, float | None] = {}
        for j, d in enumerate(mapping.domains):
            term = mapping.term(j)
            if term is None:
                out[d] = None
            elif term.component is None:
                out[d] = 0.0
            else:
                std = spread.get(mapping.domains[term.component], {}).get("std")
                out[d] = None if std is None else abs(term.slope) * float(std)
        return out

    @property
    def predicted(self) -> dict[str, dict[str, float]]:
        """Predicted capability scores of the chosen and of every baseline mixture (file order)."""
        predicted = {"chosen": self.predictions, **{n: b.predicted for n, b in self.best.baselines.items()}}
        return {n: {c: p.value for c, p in pr.capabilities.items()} for n, pr in predicted.items()}


# --------------------------------------------------------------------------- readers


def _searched(part: T | None) -> T:
    if part is None:  # load_run checked: only a hand-built RunData gets here
        raise DemixError("best_mixture.json holds no search result", "run `demix search CONFIG` to write it")
    return part


def _read_best(path: Path) -> BestMixture:
    best = BestMixture.read(path)
    if best.predicted is None or best.top_k is None or best.objective is None or best.predictor is None:
        raise DemixError(f"'{path}' holds a mixture but no search result (no predictions, top-k, objective or predictor)",
                         "run `demix search CONFIG` to write it")
    return best


def _read_cv_rounds(run: RunDir) -> list[CvReport]:
    rounds: list[CvReport] = []
    while (path := run.round_files(len(rounds)).cv).is_file():
        rounds.append(CvReport.read(path))
    return rounds


def _read_last_round(run: RunDir, last: int) -> tuple[CandidatePool | None, ParetoFront | None, int | None]:
    """The pool, the Pareto front and how many candidates the front was computed over, of round ``last``."""
    files = run.round_files(last)
    pareto_over = Selection.read(files.selection).pareto_over if files.selection.is_file() else None
    pool = CandidatePool.read(files.pool) if files.pool.is_file() else None
    pareto = ParetoFront.read(files.pareto) if files.pareto.is_file() else None
    return pool, pareto, pareto_over


def _read_audit(config: RunConfig, run: RunDir) -> tuple[AuditReport | None, str | None]:
    """The merge-validity audit of the run's components: fidelity/audit.json, else computed now."""
    from demix.fidelity.audit_report import AuditReport, AuditThresholds

    saved = run.fidelity_files.audit
    if saved.is_file():
        try:
            return AuditReport.read(saved), None
        except DemixError:
            pass
    # Paths as demix.training resolves them, without importing it (transformers' Trainer costs
    # tens of seconds to import on a busy 2-core machine).
    base = Path(config.model.base_path) if config.model.base_path else run.base
    paths = config.train.components.paths
    comps = {d: Path(paths[d]) if d in paths else run.component(d) for d in config.data.domain_names}
    comps = {d: p for d, p in comps.items() if d in paths or (p / "demix.json").is_file()}
    if not comps:
        return None, "no finished components"
    try:
        from demix.fidelity.audit import audit_components

        return audit_components(base, comps, thresholds=AuditThresholds.from_config(config.fidelity)), None
    except DemixError as exc:
        return None, exc.what


def _read_fidelity(run: RunDir) -> FidelityResults | None:
    """``fidelity/fidelity.json``; None when the stage has not run (or, with a warning, when the
    file cannot be read: the rest of the report still stands)."""
    from demix.fidelity.files import FidelityResults

    path = run.fidelity_files.results
    if not path.is_file():
        return None
    try:
        return FidelityResults.read(path)
    except DemixError as exc:
        log.warning("report: %s; fidelity left out", exc.what)
        return None


def _read_fidelity_scores(run: RunDir) -> FidelityScores | None:
    """``fidelity/scores.json``; None when absent (or, with a warning, unreadable)."""
    from demix.fidelity.files import FidelityScores

    path = run.fidelity_files.scores
    if not path.is_file():
        return None
    try:
        return FidelityScores.read(path)
    except DemixError as exc:
        log.warning("report: %s; the reference check of the chosen mixture is left out", exc.what)
        return None


def _read_last_predictors(run: RunDir, last: int) -> TargetPredictors | None:
    """Round ``last``'s capability predictors (one kind, or one per target after a domain was
    added); None (with a warning) when they cannot be read."""
    from demix.search.fitting import TargetPredictors

    path = run.round_files(last).predictors / "capabilities"
    if not (path / "predictors.json").is_file():
        return None
    try:
        return TargetPredictors.load(path)
    except DemixError as exc:
        log.warning("report: %s; the reference check of the chosen mixture is left out", exc.what)
        return None


def _stage_times(run: RunDir) -> list[StageTime]:
    """Each stage's time in the latest invocation that ran it (not skipped), first-run order."""
    latest: dict[str, StageTime] = {}
    for entry in read_timings(run):
        for s in entry.get("stages", []):
            if not s.get("skipped"):
                latest[s["stage"]] = StageTime(s["stage"], s["seconds"], entry.get("started"))
    return list(latest.values())


def load_run(run: RunDir, config: RunConfig | None = None) -> RunData:
    """Read what the report needs; a clear error when the run has no search result yet."""
    if run.root.exists() and not run.root.is_dir():
        raise DemixError(f"'{run.root}' is a file, not a run directory", "pass the output_dir of a run (e.g. runs/demo)")
    if not run.root.is_dir():
        raise DemixError(f"run directory '{run.root}' does not exist", "pass the output_dir of a run (e.g. runs/demo)")
    if config is None:
        if not run.config.is_file():
            raise DemixError(f"'{run.root}' is not a demix run directory (no config.yaml)", "pass the output_dir of a run")
        config = load_config(run.config)
    if not run.best_mixture.is_file():
        raise DemixError(
            f"run '{run.root}' has no chosen mixture yet ({run.best_mixture.name} is missing)",
            "finish the search first: `demix run CONFIG` (or `demix search CONFIG`)",
        )
    best = _read_best(run.best_mixture)
    from demix.proxy_kind import MERGED
    from demix.store import Store

    with Store(config.store.url or run.store_url) as store:
        evaluations = store.evaluations_done(MERGED)
    cv_rounds = _read_cv_rounds(run)
    pool = pareto = pareto_over = None
    if cv_rounds:
        pool, pareto, pareto_over = _read_last_round(run, len(cv_rounds) - 1)
    audit, audit_error = _read_audit(config, run)
    fidelity = _read_fidelity(run)
    scores = _read_fidelity_scores(run) if run.fidelity_files.scores.is_file() else None
    predictors = _read_last_predictors(run, len(cv_rounds) - 1) if scores is not None and cv_rounds else None
    return RunData(run, config, best, evaluations, cv_rounds, pool, pareto, _stage_times(run), audit, audit_error,
                   fidelity, pareto_over, scores, predictors)


def out_of_fold(data: RunData) -> dict[str, dict[str, Any]]:
    """Out-of-fold predictions of every capability for the stored proxies:
    ``{capability: {measured, predicted, round, spearman, n, rmse}}`` (same folds and seed as the search)."""
    from demix.predictors import cross_validate
    from demix.search import resolve_directions
    from demix.search.fitting import target_data

    evals = data.evaluations
    if len(evals) < 2:
        return {}
    s = data.config.search
    directions = resolve_directions(evals, data.config)
    # Each capability on the proxies scored with it (one added with a domain: the rows since).
    X, caps, _ = target_data(evals, data.domains, directions)
    rounds = np.array([e.round if e.round is not None else -1 for e in evals])
    out = {}
    for c, (idx, y) in caps.items():
        rep = cross_validate(X[idx], {c: y}, s.predictor, s.cv_folds, s.seed)[c]
        if "predictions" not in rep:
            continue
        out[c] = {"measured": y, "predicted": np.array(rep["predictions"]), "round": rounds[idx],
                  "spearman": rep["spearman"], "n": rep["n"], "rmse": rep["rmse"]}
    return out
