"""The search loop: evaluate proxies for sampled mixtures, fit predictors, rank a candidate
pool, pick the mean of the top-k, and repeat in the predicted top region.

Everything the loop samples, evaluates, fits and ranks is *component weights* (the merge
coefficients of a proxy; the store keys proxies by them). The run's map to the *data mixture*
they stand for (:func:`demix.training.roles.mixture_map`: each component's training mixture)
enters where the data mixture is meant: ``search.bounds`` (data shares, mapped exactly onto the
component weights), ``weight.<domain>`` constraints, the baselines (natural and uniform data
mixtures) and ``best_mixture.json`` (both mixtures; tokens and epochs of the data mixture).

Round r (sizes in ``search.rounds``):

1. *Plan* (:mod:`~demix.search.planning`): round 0 samples the (bounded) simplex around the
   prior; round r > 0 draws from the top region of the pool ranked after round r - 1 (or, with
   ``search.planner: ucb``, takes its best upper confidence bounds, spaced apart). The plan
   is drawn from the seed alone (no clock, no state) and written to ``round_<r>/planned.json``
   before the first evaluation, so a resumed search evaluates the same mixtures.
2. *Evaluate*: every planned mixture not already in the store is scored and committed to the
   store before the next one starts, with what it was scored with (:mod:`~demix.search.settings`).
3. *Fit*: predictors for every capability and benchmark on the evaluations of the mixtures
   planned in rounds 0..r, with a k-fold CV report (``cv.json``) and the fit itself (``predictors/``).
4. *Rank*: a fresh pool of ``search.pool_size`` candidates, predicted capabilities, constraints,
   objective; top-k mean and spread (``selection.json``, written last), the pool (``pool.npz``)
   and the Pareto front across capabilities among the best-ranked candidates (``pareto.csv``).

A finished round's files are final: a resumed search reads its fit and ranking back from them
(the next round is planned from that ranking) and never fits or writes them again, unless they
record other search, scoring or component settings. The selection after the last round is
written to ``best_mixture.json``.

Why one module of ~500 lines: the round state machine (plan, evaluate, fit, rank, refine)
reads in order here; each step's logic lives in its own module (planning, fitting, ranking,
refine, evidence) and this file only sequences and records them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from demix import proxy_kind as kinds
from demix.config import RunConfig
from demix.data_mixture import MixtureMap
from demix.errors import DemixError
from demix.executors.base import Executor, LocalExecutor, evaluate_planned, result_parts
from demix.mixtures import mixture_key, prior_weights
from demix.objectives import capability_weights, parse_constraints
from demix.proxy_kind import screened
from demix.rundir import RoundFiles, RunDir, read_document_counts
from demix.sampling import Bounds, resolve_bounds, sample_mixtures
from demix.search.acquisition import fit_capability_ensemble, objective_spread
from demix.search.best import best_mixture
from demix.search.chosen import record_chosen
from demix.search.evidence import CHECKPOINTS_KEY, Evidence, migrate
from demix.search.files import BestMixture, RoundSummary
from demix.search.fitting import Fit, fit_all, resolve_directions
from demix.search.planning import Planner, rng_for
from demix.search.ranking import Ranking, rank_pool
from demix.search.refine import check_refine, refine_best
from demix.search.round_files import Selection
from demix.search.screening import check_screening, screen_round
from demix.search.settings import ScoringSettings, is_search_row, ranking_fingerprint
from demix.store import Evaluation, Store

log = logging.getLogger("demix.search")

Scorer = Callable[[dict[str, float]], Any]

EventKind = Literal["round_started", "proxy_evaluated", "round_ranked", "screening_started", "proxy_screened"]
ROUND_STARTED: EventKind = "round_started"
PROXY_EVALUATED: EventKind = "proxy_evaluated"
ROUND_RANKED: EventKind = "round_ranked"
SCREENING_STARTED: EventKind = "screening_started"
"""With ``search.screening``: the round's screens begin (``planned``: mixtures to screen)."""
PROXY_SCREENED: EventKind = "proxy_screened"


@dataclass(frozen=True)
class SearchEvent:
    """What the search just did, for a progress display (:class:`demix.search.LiveSearchDisplay`)."""

    kind: EventKind
    round: int
    planned: int = 0
    """round_started: mixtures the round scores in full (with screening: the survivors);
    screening_started: mixtures it screens."""
    done: int = 0
    """round_started, screening_started: of those, already in the store."""
    mixture: dict[str, float] | None = None
    """proxy_evaluated, proxy_screened: the component weights of the proxy just committed to the store."""
    ranking: Ranking | None = None
    """round_ranked: the ranked pool after the round."""
    evaluations: int = 0
    """round_ranked: evaluations the predictors were fitted on."""


OnEvent = Callable[[SearchEvent], None]


@dataclass
class SearchResult:
    """What a search found; the same content is in ``best_mixture.json``."""

    component_weights: dict[str, float]
    """The chosen component weights (top-k mean): what the search ranked."""
    data_mixture: dict[str, float]
    """The data mixture they stand for: what to train on."""
    best: BestMixture
    evaluations: int
    """Evaluations in the store the last predictors were fitted on."""
    evaluated_now: int
    """Evaluations this call stored (0 for a search resumed after its last evaluation)."""
    rounds: list[RoundSummary] = field(default_factory=list)
    path: Path | None = None
    setup_seconds: float | None = None
    """One-off cost of building the scorer (proxy builder and evaluator), rounded to 0.01 s; 0
    when nothing had to be evaluated, None when unknown (e.g. a caller's own scorer)."""


def expected_capabilities(config: RunConfig) -> list[str]:
    """Capability names the evaluation reports (the evaluation's own defaults when none are set)."""
    from demix.evaluation.benchmarks import resolve_capabilities

    return [c.name for c in resolve_capabilities(config)]


def _check_evidence(evaluations: Sequence[Evaluation], evidence: Evidence, store_name: str) -> None:
    """The rows a round is fitted on must all be valid for the current checkpoints (a row made
    stale by a component changed while the search ran is never fitted)."""
    bad = [e for e in evaluations if not evidence.is_valid(e)]
    if bad:
        raise DemixError(
            f"the store {store_name} holds {len(bad)} planned merged evaluation(s) that are no longer valid "
            f"({evidence.reason(bad[0])}): the base or a component changed while the search ran",
            "run the search again: it evaluates the stale proxies again on the checkpoints now on disk",
        )


def _sampling_space(
    config: RunConfig, token_counts: Mapping[str, float] | None, mapping: MixtureMap
) -> tuple[Bounds, np.ndarray]:
    """Bounds (data-share bounds mapped onto the component weights) and prior (over the
    component weights) of the sampled mixtures, after checking the objective: a bad objective
    or infeasible bounds fail before any proxy is evaluated."""
    s = config.search
    domains = config.data.domain_names
    if not s.rounds or any(n <= 0 for n in s.rounds):
        raise DemixError(f"search.rounds must be positive proxy counts, got {s.rounds}", "e.g. search.rounds: [32, 16, 8]")
    expected = expected_capabilities(config)
    parse_constraints(s.constraints, expected, domains)
    capability_weights(expected, s.capability_weights)
    bounds = resolve_bounds(domains, s.bounds, token_counts, s.target_tokens, mapping)
    # The prior is over component weights, centred at the domain token shares (as it always was).
    return bounds, prior_weights(domains, s.sampler.prior, token_counts)


class _Rounds:
    """The state one search carries from round to round: what it planned and evaluated, the
    last fit and ranking. A round whose files are complete and record this search's settings is
    final: it is read back, never fitted or written again."""

    def __init__(
        self, config: RunConfig, store: Store, executor: Executor, proxy_kind: str,
        token_counts: Mapping[str, float] | None, fingerprint: str | None, on_event: OnEvent,
        space: tuple[Bounds, np.ndarray], mapping: MixtureMap, evidence: Evidence | None = None,
    ) -> None:
        self.config, self.store, self.executor = config, store, executor
        self.proxy_kind, self.token_counts, self.fingerprint, self.on_event = proxy_kind, token_counts, fingerprint, on_event
        self.domains = config.data.domain_names
        self.mapping = mapping
        self.evidence = evidence
        """How stored rows stand against the current domains and checkpoints (None: judged by the caller)."""
        self.bounds, self.prior = space
        self.planner = Planner(config, *space)
        self.scoring = ScoringSettings.of(config)
        self.settings: dict[str, str | None] = {
            "search": ranking_fingerprint(config, token_counts, mapping), "scoring": self.scoring.fingerprint, "components": fingerprint,
        }
        self.ranking: Ranking | None = None
        self.fit: Fit | None = None
        self.planned_keys: list[str] = []
        """Every planned mixture so far, rounds in order: what each round's fit is made on."""
        self.evaluated_now = 0
        self.summaries: list[RoundSummary] = []
        self.store_name = "of store.url"
        """How messages name the store (never its URL: it may hold a password)."""

    def run(self, r: int, n: int, files: RoundFiles, higher_is_better: Mapping[str, bool] | None) -> None:
        """Plan, (screen,) evaluate, then read the round's files back when it is finished, else fit and rank."""
        done = self.store.done_keys(self.proxy_kind)
        planned = self.planner.plan(r, n, files, self.ranking, done, self.usable_rows)
        seen = set(self.planned_keys)
        self.planned_keys += [k for k in map(mixture_key, planned) if k not in seen]
        # With screening, only the screened survivors (and mixtures scored in full before) are
        # scored in full; the rest of the plan is fitted on by no round.
        full = self.screen(r, planned, files) if self.config.search.screening.enabled else None
        scored = planned if full is None else [planned[i] for i in full]
        todo = sum(mixture_key(m) not in done for m in scored)
        self.on_event(SearchEvent(ROUND_STARTED, r, planned=len(scored), done=len(scored) - todo))
        log.info("round %d: %d planned, %d to evaluate", r, len(planned), todo)
        self.reevaluate_stale(r, planned)
        self.evaluate(r, planned, full)
        # A round that carries over stored evidence plans more mixtures than its size: it is
        # still the round of search.rounds' size (so a finished search reads as complete).
        size = n if len(planned) > n else len(planned)
        if not self.read_finished(r, size, files):
            self.fit_and_rank(r, size, files, higher_is_better)

    def screen(self, r: int, planned: list[dict[str, float]], files: RoundFiles) -> list[int]:
        """Screen the round's mixtures that lack a full score (:mod:`demix.search.screening`);
        the indices of ``planned`` to score in full."""
        kept = screen_round(
            r, planned, config=self.config, store=self.store, executor=self.executor, full_kind=self.proxy_kind,
            capabilities=expected_capabilities(self.config),
            provenance=lambda i, m: self.provenance(r, i, m), components=self.fingerprint, scoring=self.scoring,
            directions=self._directions,
            on_started=lambda n, done: self.on_event(SearchEvent(SCREENING_STARTED, r, planned=n, done=done)),
            on_screened=lambda m: self.on_event(SearchEvent(PROXY_SCREENED, r, mixture=m)), path=files.screening,
        )
        done = self.store.done_keys(self.proxy_kind)
        return sorted({i for i, m in enumerate(planned) if mixture_key(m) in done} | set(kept))

    def usable_rows(self) -> list[Evaluation]:
        """The stored evaluations the planner may carry over or restore: valid for the current
        domains and checkpoints (set-aside and stale rows are neither planned from nor fitted)."""
        rows = self.store.evaluations_done(self.proxy_kind)
        return rows if self.evidence is None else [e for e in rows if self.evidence.is_valid(e)]

    def reevaluate_stale(self, r: int, planned: list[dict[str, float]]) -> None:
        """Evaluate again, on the checkpoints now on disk, the planned mixtures whose stored row
        used a base or component that changed since; each row is replaced in place as its result
        arrives (a kill keeps the ones replaced; the rest are still stale and done on resume)."""
        if self.evidence is None:
            return
        stale = self.evidence.stale_keys()
        rows = {e.mixture_key: e for e in self.store.evaluations_done(self.proxy_kind) if e.mixture_key in stale}
        todo = [(i, m) for i, m in enumerate(planned) if mixture_key(m) in rows]
        if not todo:
            return
        log.info("round %d: evaluating %d stale proxy(ies) again on the current components", r, len(todo))

        def replace(i: int, m: dict[str, float], result: Any) -> None:
            bench, caps, hib = result_parts(result)
            provenance = {**self.provenance(r, i, m), "higher_is_better": self._directions(bench, hib)}
            if self.store.replace(m, bench, caps, self.proxy_kind, provenance):
                self.evaluated_now += 1
                assert self.evidence is not None
                self.evidence.verdicts.pop(mixture_key(m), None)  # judged again on its new record
                self.on_event(SearchEvent(PROXY_EVALUATED, r, mixture=m))

        self.executor.evaluate(iter(todo), replace)

    def provenance(self, r: int | None, i: int | None, mixture: Mapping[str, float] | None = None) -> dict[str, Any]:
        """What a merged evaluation records besides its scores; with ``mixture``, the base and
        each component it gives non-zero weight (:mod:`demix.search.evidence`)."""
        checkpoints = {} if mixture is None or self.evidence is None else {
            CHECKPOINTS_KEY: self.evidence.checkpoints.record(mixture)}
        return {
            "round": r,
            "plan_index": i,
            "seed": self.config.search.seed,
            "merge_method": self.config.merge.method,
            "source": "demix search",
            "components": self.fingerprint,
            **checkpoints,
            **self.scoring.provenance(),
        }

    def _directions(self, bench: Mapping[str, float], hib: Mapping[str, bool] | None) -> Mapping[str, bool | None]:
        return hib or {b.name: b.higher_is_better for b in self.config.evaluation.benchmarks if b.name in bench}

    def evaluate(self, r: int | None, planned: list[dict[str, float]], indices: Sequence[int] | None = None) -> None:
        """Score the planned mixtures the store lacks (``indices``: only those of ``planned``),
        committing each result as it arrives (``r`` None: refinement proposals, which belong to
        no round's plan)."""

        def commit(i: int, m: dict[str, float], result: Any) -> bool:
            bench, caps, hib = result_parts(result)
            provenance = {**self.provenance(r, i, m), "higher_is_better": self._directions(bench, hib)}
            stored = self.store.complete(m, bench, caps, self.proxy_kind, provenance)
            # Events number the refinement as the round after the last.
            self.on_event(SearchEvent(PROXY_EVALUATED, len(self.config.search.rounds) if r is None else r, mixture=m))
            return stored

        # Claims each mixture just before dispatch, commits each result as it arrives, and
        # returns once every planned mixture is done (by this driver or another).
        self.evaluated_now += evaluate_planned(
            self.executor, self.store, planned, commit, round=r, proxy_kind=self.proxy_kind,
            wait_seconds=self.config.store.wait_seconds, indices=indices,
        )

    def rescore(self, stale: Sequence[Evaluation]) -> None:
        """Evaluate the stored mixtures of ``stale`` again under this config's settings and
        replace their scores in place (round and plan index kept); the rounds fitted on them
        are then fitted again, since their files record the old scoring settings."""
        log.info("re-scoring %d stored evaluation(s) under the new settings", len(stale))
        rows = {e.mixture_key: e for e in stale}

        def replace(_: int, m: dict[str, float], result: Any) -> None:
            bench, caps, hib = result_parts(result)
            old = rows[mixture_key(m)].provenance
            provenance = {**old, **self.provenance(old.get("round"), old.get("plan_index"), m),
                          "higher_is_better": self._directions(bench, hib)}
            if self.store.replace(m, bench, caps, self.proxy_kind, provenance):
                self.evaluated_now += 1

        items = ((i, {d: float(e.weights.get(d, 0.0)) for d in self.domains}) for i, e in enumerate(stale))
        self.executor.evaluate(items, replace)

    def fitted_evaluations(self) -> list[Evaluation]:
        """The stored evaluations of the mixtures planned so far, in plan order: what the last
        round was fitted on (the chosen mixture's intervals are fitted on them too)."""
        stored = {e.mixture_key: e for e in self.store.evaluations_done(self.proxy_kind)}
        return [stored[k] for k in self.planned_keys if k in stored]

    def read_finished(self, r: int, planned: int, files: RoundFiles) -> bool:
        """Read a finished round's fit and ranking back from its files; False (the round is then
        fitted and ranked) when they are incomplete, unreadable or made under other settings."""
        if not all(p.exists() for p in (files.selection, files.cv, files.pool, files.pareto)):
            return False
        try:
            selection = Selection.read(files.selection)
            if selection.settings != self.settings:
                log.info("round %d: its files record other search settings; fitting and ranking it again", r)
                return False
            fit, ranking = Fit.read(files), Ranking.read(files, self.domains, selection)
        except Exception as exc:  # any unreadable file (LightGBM's own errors included): fitting again is safe
            log.warning("round %d: its files cannot be read back (%s); fitting and ranking it again", r, exc)
            return False
        self.fit, self.ranking = fit, ranking
        self.summaries.append(self.summary(r, planned, fit.n, selection))
        self.on_event(SearchEvent(ROUND_RANKED, r, ranking=ranking, evaluations=fit.n))
        return True

    def summary(self, r: int, planned: int, evaluations: int, selection: Selection) -> RoundSummary:
        """The round in ``best_mixture.json``: its top-k mean as component weights (what the
        round file holds) and as the data mixture they stand for."""
        return RoundSummary(r, planned, evaluations, selection.weights, self.mapping.data_of(selection.weights))

    def fit_and_rank(self, r: int, planned: int, files: RoundFiles, higher_is_better: Mapping[str, bool] | None) -> None:
        """Fit on the evaluations of the rounds so far, rank a fresh pool, write the round's files."""
        s = self.config.search
        # The mixtures planned so far, in plan order: the fit depends neither on completion order
        # (workers, drivers) nor on rows stored since (later rounds, other stages).
        stored = {e.mixture_key: e for e in self.store.evaluations_done(self.proxy_kind)}
        evaluations = [stored[k] for k in self.planned_keys if k in stored]
        stale = self.scoring.stale(evaluations)
        if stale:  # a planned mixture another stage stored under other settings (or a concurrent change)
            raise self.scoring.refuse(stale, self.store_name)
        if self.evidence is not None:
            _check_evidence(evaluations, self.evidence, self.store_name)
        directions = resolve_directions(evaluations, self.config, higher_is_better)
        self.fit = fit_all(evaluations, self.domains, directions, s.predictor, s.cv_folds, s.seed)
        # With search.predictor_intervals: the ensemble's out-of-fold interval coverage goes into
        # cv.json (written next), the objective's ensemble mean and spread into pool.npz.
        ensemble = fit_capability_ensemble(evaluations, self.fit, self.config) if s.predictor_intervals else None
        # selection.json marks the round finished: gone while the other files are rewritten, so a
        # kill in between never leaves a finished-looking round of mixed fits.
        files.selection.unlink(missing_ok=True)
        self.fit.write(files)
        pool = sample_mixtures(self.domains, s.pool_size, self.prior, s.sampler, self.bounds, rng_for(s.seed, r, 1))
        self.ranking = rank_pool(pool, self.fit, self.config, self.token_counts, self.mapping)
        if ensemble is not None:  # what the ucb planner plans the next round by
            self.ranking.objective_mean, self.ranking.objective_std = objective_spread(ensemble, self.ranking, self.config)
        selection = self.ranking.write(files, self.domains, self.fit.n, self.settings)
        self.summaries.append(self.summary(r, planned, self.fit.n, selection))
        self.on_event(SearchEvent(ROUND_RANKED, r, ranking=self.ranking, evaluations=self.fit.n))


def run_search(
    config: RunConfig,
    run: RunDir,
    scorer: Scorer | None,
    token_counts: Mapping[str, float] | None,
    store: Store | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
    proxy_kind: str = kinds.MERGED,
    executor: Executor | None = None,
    on_event: OnEvent | None = None,
    rescore: bool = False,
) -> SearchResult:
    """Run (or resume) the search rounds of ``config.search`` and write ``best_mixture.json``.

    ``scorer(mixture)`` evaluates one proxy and returns an object with ``.benchmarks`` (raw
    metrics) and ``.capabilities`` (higher is better); ``executor`` (a
    :class:`demix.executors.Executor`) evaluates each round's mixtures instead, e.g. on a Ray
    cluster. Every result is committed to ``store`` (default: ``store.url`` or the run's sqlite
    file) before the next call; mixtures already in the store are never scored again.
    ``on_event`` hears of each round, evaluation and ranking (see :class:`SearchEvent`).
    :func:`search` builds the run's executor and calls this.

    Stored evaluations scored under other settings (:class:`~demix.search.settings.ScoringSettings`:
    ``evaluation.*``, ``merge.*``) are refused with an error naming what changed; with
    ``rescore`` they are evaluated again under this config's settings and replaced in place.
    Finished rounds are read back from their files, never fitted or written again.

    The map from component weights to the data mixture is the run's
    (:func:`demix.training.roles.mixture_map`: each component's recorded, declared or recipe
    training mixture); ``best_mixture.json`` records it as ``mapping``.
    """
    from demix.checkpoints import components_fingerprint
    from demix.training.roles import mixture_map

    s = config.search
    mapping = mixture_map(config, run)
    space = _sampling_space(config, token_counts, mapping)
    check_refine(config)  # a refinement that cannot run fails before any proxy is evaluated
    check_screening(config)
    documents = read_document_counts(run, config.data.domain_names)
    own_store = store is None
    store = store or Store(config.store.url or run.store_url, lease_seconds=config.store.lease_seconds)
    try:
        if executor is None:
            if scorer is None:
                raise DemixError("the search has neither a scorer nor an executor", "pass scorer(mixture) -> result, or executor=")
            executor = LocalExecutor(scorer)
        fingerprint = components_fingerprint(config, run)
        stored = store.evaluations_done(proxy_kind)
        # Each row judged per component: rows of a domain added since stay (weight 0 there), rows
        # of a removed domain are set aside, rows of a retrained component are stale.
        evidence = Evidence.judge(config, run, stored)
        rounds = _Rounds(
            config, store, executor, proxy_kind, token_counts, fingerprint, on_event or (lambda e: None), space, mapping,
            evidence,
        )
        # Never print a server URL: it may hold a password.
        store_name = rounds.store_name = "of store.url" if config.store.url else str(run.store_file)
        if stored:
            log.info("stored merged evaluations for the current components: %s", evidence.describe())
        migrated = migrate(store, evidence, proxy_kind)
        if migrated:
            log.info("recorded per-component fingerprints in %d evaluation(s) of an older demix", migrated)
        # Before anything is written: scores of other settings are never fitted with these. Only
        # the search's rows that are still valid count (the fidelity stage's own proxies are never
        # planned; set-aside rows are never fitted; stale ones are evaluated again anyway).
        stale = rounds.scoring.stale([e for e in stored if is_search_row(e) and evidence.is_valid(e)])
        if stale and not rescore:
            raise rounds.scoring.refuse(stale, store_name)
        released = store.release_pending(proxy_kind)
        if s.screening.enabled:  # the screens a killed search left claimed
            released += store.release_pending(screened(s.screening.fraction))
        if released:
            log.info("released %d unfinished evaluation(s) of a killed search", released)
        if stale:
            rounds.rescore(stale)
        for r, n in enumerate(s.rounds):
            rounds.run(r, n, run.round_files(r), higher_is_better)
        assert rounds.ranking is not None and rounds.fit is not None
        best = best_mixture(config, rounds.ranking, rounds.fit, token_counts, documents, rounds.summaries, fingerprint,
                            rounds.scoring.fingerprint, mapping)
        if s.refine.enabled:
            best = refine_best(config, run, rounds, best, executor, token_counts, documents, fingerprint, mapping)
        # Intervals at the chosen mixture, and its measured proxy beside the prediction.
        best = record_chosen(config, rounds, best)
        best.write(run.best_mixture)
        best.path = run.best_mixture  # as if read back: errors about it name the file
    finally:
        if own_store:
            store.close()
    assert best.component_weights is not None and best.data_mixture is not None
    return SearchResult(best.component_weights, best.data_mixture, best, rounds.fit.n, rounds.evaluated_now,
                        rounds.summaries, run.best_mixture)


def search(
    config: RunConfig,
    run: RunDir,
    *,
    device: str | None = None,
    on_event: OnEvent | None = None,
    store: Store | None = None,
    rescore: bool = False,
) -> SearchResult:
    """Run (or resume) the search of a run directory where ``executor.kind`` says: the merged
    proxies of the run's base and components, scored by its evaluation. What ``demix search``
    and ``demix run`` call. ``device`` overrides ``evaluation.device`` (``executor.device`` on Ray);
    ``rescore``: see :func:`run_search`."""
    from demix.executors import make_executor
    from demix.rundir import read_token_counts

    # Before any worker starts: a run that is not prepared fails here, naming the fix.
    token_counts = read_token_counts(run, config.data.domain_names)
    with make_executor(config, run, device=device) as executor:
        result = run_search(config, run, None, token_counts, store=store, executor=executor, on_event=on_event,
                            rescore=rescore)
        seconds = executor.setup_seconds
    result.setup_seconds = None if seconds is None else round(seconds, 2)
    return result
