"""Each round's plan: the component weights of the proxies it evaluates, written to
``planned.json`` before the first evaluation and read back on resume.

Round 0 samples the component weights inside the bounds (data-share bounds mapped onto them,
:func:`demix.sampling.resolve_bounds`) around the prior; round r > 0 draws from the top region
(the best ``search.region_size`` candidates, default top_k) of round r - 1's ranked pool,
skipping mixtures the store already held; with ``search.planner: ucb`` it takes instead the
pool's best upper confidence bounds on the objective, spaced apart and from every evaluated
mixture (:func:`demix.search.acquisition.ucb_picks`). Both come from the seed (and the previous
round's files) alone, so a plan can be drawn again. A round whose ``planned.json`` is lost (deleted because it was corrupt, as its error
advises) is planned as it was: the stored rows of that round keep their place in the plan
(each records its round and plan index), the rest is drawn from the seed against the store as
it was then (without the rows of this round and later ones) and round r - 1's ranking, which
is the same because a finished round's files are final.

When the run's domains changed since a round was planned (its ``planned.json`` records other
domains: one was added or removed), the old plan is superseded, never evaluated again:

- round 0 carries over every stored search evaluation that is still valid evidence
  (:mod:`demix.search.evidence`: zero weight on the removed domains, base and used components
  unchanged), with weight 0 on the added domains, then adds ``max(ceil(n * added / K), n -
  carried)`` *cover* points (:func:`cover_points`): of a seeded sample of the bounded simplex
  over the new domains, those farthest from the evidence, one at a time, so they go where no
  evidence is (a domain added is a face of the simplex nothing has left yet);
- rounds r > 0 are drawn again from round r - 1's ranking (which knows the new dimension).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np

from demix.config import RunConfig
from demix.errors import DemixError
from demix.mixtures import mixture_key, rows_to_mixtures
from demix.rundir import RoundFiles
from demix.sampling import Bounds, sample_mixtures
from demix.search.ranking import Ranking
from demix.search.round_files import RoundPlan
from demix.store import Evaluation

log = logging.getLogger("demix.search")

Mixture = dict[str, float]


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """Independent deterministic streams per (round, purpose): resumes redraw the same values."""
    return np.random.default_rng([seed, *stream])


class Planner:
    """Plans the rounds of one search (config, domains, bounds and prior fixed)."""

    def __init__(self, config: RunConfig, bounds: Bounds, prior: np.ndarray) -> None:
        self.config, self.bounds, self.prior = config, bounds, prior
        self.domains = config.data.domain_names

    def plan(
        self, r: int, n: int, files: RoundFiles, previous: Ranking | None, done: set[str],
        rows: Callable[[], Sequence[Evaluation]],
    ) -> list[Mixture]:
        """Round ``r``'s ``n`` mixtures: from ``planned.json`` when it exists, else planned (as it
        was, when rows of the round are stored) and written. ``done``: the store's finished keys;
        ``rows()``: its finished evaluations (read only when the plan is made here)."""
        if files.planned.is_file():
            plan = self._read(r, n, files)
            if plan is not None:
                return plan
            if r == 0:
                mixtures = self._carry_over(n, list(rows()), done)
                RoundPlan(r, n, list(self.domains), mixtures).write(files.planned)
                return mixtures
            # A later round of the old domains: drawn again from the new ranking; its old rows
            # are in round 0's carried evidence, not restored here.
            mixtures = rows_to_mixtures(self.domains, self._draw(r, n, previous, done, rows))
            RoundPlan(r, n, list(self.domains), mixtures).write(files.planned)
            return mixtures
        stored = list(rows())
        this_or_later = {e.mixture_key for e in stored if e.round is not None and e.round >= r}
        mixtures = rows_to_mixtures(self.domains, self._draw(r, n, previous, done - this_or_later, lambda: stored))
        mixtures = self._restore(r, mixtures, [e for e in stored if e.round == r])
        RoundPlan(r, n, list(self.domains), mixtures).write(files.planned)
        return mixtures

    def _read(self, r: int, n: int, files: RoundFiles) -> list[Mixture] | None:
        """The round's stored plan; None when it was planned for other domains (superseded)."""
        plan = RoundPlan.read(files.planned)
        if plan.domains != list(self.domains):
            added = [d for d in self.domains if d not in plan.domains]
            removed = [d for d in plan.domains if d not in self.domains]
            log.info("round %d was planned for domains %s (added %s, removed %s): planned again, reusing the "
                     "stored evidence", r, plan.domains, added, removed)
            return None
        if plan.size != n:
            raise DemixError(
                f"round {r} was planned with {plan.size} proxies, search.rounds now asks for {n}",
                "restore search.rounds, or start a new output_dir",
            )
        return plan.mixtures

    def _carry_over(self, n: int, rows: Sequence[Evaluation], done: set[str]) -> list[Mixture]:
        """Round 0 of a run whose domains changed: the valid stored evidence (``rows``, zero on
        the added domains), then the cover points (see the module notes)."""
        from demix.search.evidence import zero_extended

        seen: set[str] = set()
        carried: list[Mixture] = []
        for e in rows:
            if e.mixture_key in done and e.mixture_key not in seen:
                seen.add(e.mixture_key)
                carried.append(zero_extended(e, self.domains))
        recorded = {d for e in rows for d in e.weights}
        added = [d for d in self.domains if d not in recorded] if rows else []
        k = max(math.ceil(n * len(added) / len(self.domains)), n - len(carried))
        evidence = np.array([[m[d] for d in self.domains] for m in carried]).reshape(len(carried), len(self.domains))
        cover = cover_points(self.domains, k, evidence, self, rng_for(self.config.search.seed, 0, 2))
        fresh = [m for m in rows_to_mixtures(self.domains, cover) if mixture_key(m) not in seen]
        log.info("round 0: %d stored evaluation(s) carried over (weight 0 on added domains %s), %d new point(s) "
                 "where no evidence is", len(carried), added, len(fresh))
        return carried + fresh

    def _draw(
        self, r: int, n: int, previous: Ranking | None, done: set[str],
        rows: Callable[[], Sequence[Evaluation]] = tuple,
    ) -> np.ndarray:
        """Round ``r``'s mixtures before any stored row is restored: round 0 samples the bounded
        simplex; later rounds draw from the top region (``paper``) or take the best upper
        confidence bounds with spacing (``ucb``: :func:`demix.search.acquisition.ucb_picks`,
        spaced from the ``rows()`` whose keys are in ``done``, never one of them)."""
        s = self.config.search
        rng = rng_for(s.seed, r, 0)
        if r == 0 or previous is None:
            return sample_mixtures(self.domains, n, self.prior, s.sampler, self.bounds, rng)
        if s.planner == "ucb":
            from demix.search.acquisition import ucb_picks

            # Only what ``done`` holds counts as evaluated: a plan lost mid-round is made again
            # against the store as it was then (the round's own rows excluded), as it was first.
            seen = [e for e in rows() if e.mixture_key in done]
            evaluated = np.array([[float(e.weights.get(d, 0.0)) for d in self.domains] for e in seen])
            return ucb_picks(previous, n, self.domains, done, evaluated.reshape(len(seen), len(self.domains)),
                             s.ucb_beta, s.min_distance)
        region = previous.order[: max(s.region_size or s.top_k, n)]
        region = np.array(
            [i for i in region if mixture_key(dict(zip(self.domains, previous.weights[i]))) not in done], dtype=int
        )
        if region.size == 0:
            return np.zeros((0, len(self.domains)))
        pick = rng.choice(region, size=min(n, region.size), replace=False)
        return previous.weights[np.sort(pick)]

    def _restore(self, r: int, drawn: list[Mixture], rows: Sequence[Evaluation]) -> list[Mixture]:
        """``drawn`` with every stored row of the round at its plan index: what was evaluated is
        the plan, even where the seed's draw no longer agrees (it then says so)."""
        placed = {int(e.provenance["plan_index"]): e for e in rows if isinstance(e.provenance.get("plan_index"), int)}
        if not placed:
            return drawn
        size = max(len(drawn), max(placed) + 1)
        plan: list[Mixture | None] = [None] * size
        for i, e in placed.items():
            plan[i] = {d: float(e.weights.get(d, 0.0)) for d in self.domains}
        disagree = sum(i < len(drawn) and mixture_key(drawn[i]) != e.mixture_key for i, e in placed.items())
        if disagree:
            log.warning("round %d: %d stored mixture(s) differ from the seed's plan; the stored ones are kept", r, disagree)
        taken = {e.mixture_key for e in placed.values()}
        for i, m in enumerate(drawn):
            if plan[i] is None and mixture_key(m) not in taken:
                plan[i] = m
        log.info("round %d: planned.json re-planned from %d stored row(s) and the seed", r, len(placed))
        return [m for m in plan if m is not None]


def cover_points(
    domains: Sequence[str], k: int, evidence: np.ndarray, planner: Planner, rng: np.random.Generator,
    candidates_per_point: int = 64,
) -> np.ndarray:
    """``k`` component-weight rows inside the planner's bounds, each in turn the candidate (of a
    seeded sample of ``candidates_per_point * k``) farthest (Euclidean) from ``evidence`` (n, K)
    and the points picked before it: greedy maximin, so the points fill the region no stored
    evaluation covers, e.g. the weight of a domain just added."""
    if k <= 0:
        return np.zeros((0, len(domains)))
    s = planner.config.search
    pool = sample_mixtures(domains, candidates_per_point * k, planner.prior, s.sampler, planner.bounds, rng)
    if pool.shape[0] <= k:
        return pool
    if evidence.shape[0]:
        nearest = np.min(np.linalg.norm(pool[:, None, :] - evidence[None, :, :], axis=2), axis=1)
    else:
        nearest = np.full(pool.shape[0], np.inf)
    picked: list[int] = []
    for _ in range(k):
        # The first pick with no evidence at all is the first candidate (the seed's), not an argmax of inf.
        i = int(np.argmax(nearest)) if np.isfinite(nearest).any() else len(picked)
        picked.append(i)
        nearest = np.minimum(nearest, np.linalg.norm(pool - pool[i], axis=1))
        nearest[picked] = -1.0
    return pool[picked]
