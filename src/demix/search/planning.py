"""Each round's plan: the component weights of the proxies it evaluates, written to
``planned.json`` before the first evaluation and read back on resume.

Round 0 samples the component weights inside the bounds (data-share bounds mapped onto them,
:func:`demix.sampling.resolve_bounds`) around the prior; round r > 0 draws from the top region
(the best ``search.region_size`` candidates, default top_k) of round r - 1's ranked pool,
skipping mixtures the store already held. Both come from the seed alone, so a plan can be drawn
again. A round whose ``planned.json`` is lost (deleted because it was corrupt, as its error
advises) is planned as it was: the stored rows of that round keep their place in the plan
(each records its round and plan index), the rest is drawn from the seed against the store as
it was then (without the rows of this round and later ones) and round r - 1's ranking, which
is the same because a finished round's files are final.
"""

from __future__ import annotations

import logging
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
            return self._read(r, n, files)
        stored = list(rows())
        this_or_later = {e.mixture_key for e in stored if e.round is not None and e.round >= r}
        mixtures = rows_to_mixtures(self.domains, self._draw(r, n, previous, done - this_or_later))
        mixtures = self._restore(r, mixtures, [e for e in stored if e.round == r])
        RoundPlan(r, n, list(self.domains), mixtures).write(files.planned)
        return mixtures

    def _read(self, r: int, n: int, files: RoundFiles) -> list[Mixture]:
        plan = RoundPlan.read(files.planned)
        if plan.size != n:
            raise DemixError(
                f"round {r} was planned with {plan.size} proxies, search.rounds now asks for {n}",
                "restore search.rounds, or start a new output_dir",
            )
        if plan.domains != list(self.domains):
            raise DemixError(f"round {r} was planned for domains {plan.domains}", "use a new output_dir for new domains")
        return plan.mixtures

    def _draw(self, r: int, n: int, previous: Ranking | None, done: set[str]) -> np.ndarray:
        s = self.config.search
        rng = rng_for(s.seed, r, 0)
        if r == 0 or previous is None:
            return sample_mixtures(self.domains, n, self.prior, s.sampler, self.bounds, rng)
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
