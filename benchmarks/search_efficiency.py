"""Search efficiency: the regret of each search strategy against a dense ground truth of merged
proxies, at equal numbers of proxy evaluations (issue 18, item 4; a first cut).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_efficiency.py \
        [--dense 400] [--budgets 10 20 35] [--seeds 0 1 2] [--strategies paper ucb] [--delta-scale 0.05]

The domains are the tiny run's (tests/tiny_run.py: three held-out domains, a random base and
three components = base + small random deltas; real merged proxies scored by held-out loss on
CPU). The objective is ``weighted`` (equal weights: the mean of the capabilities, i.e. minus the
mean bits per byte), the one a proxy's measured score gives directly (``rank_mean`` ranks within
a pool, so it has no measured value).

1. *Dense ground truth*: ``--dense`` mixtures sampled from the search's bounded simplex (seed
   12345), each merged and evaluated once; the best measured objective among them is the
   reference (no gradient ascent from several starts yet: the reference is a lower bound on the
   best the proxies can show, so a regret can come out negative).
2. *Strategies*: for every budget B and seed, a fresh search with rounds ``[4B/7, 2B/7, B/7]``
   (the paper's N, N/2, N/4), pool 4000, top-k 50: ``paper`` (top-region rounds) and ``ucb``
   (``search.planner: ucb``, an ensemble of 8, beta 1). The chosen mixture is merged and
   evaluated (not counted in B).
3. *Regret* = best dense objective - measured objective of the chosen mixture; *rank* = 1 + the
   dense mixtures measured better than it.

Every evaluation is cached by mixture key (a strategy's round 0 equals another's of the same
seed), so the cost is about the dense set plus the distinct mixtures planned. Prints a
markdown table (mean and per-seed regret); nothing is asserted: one tiny run, noisy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny run's builder (tests/tiny_run.py)


def rounds_for(budget: int) -> list[int]:
    """The paper's N, N/2, N/4 schedule summing to ``budget`` (each round at least 1)."""
    sizes = [max(1, round(budget * f)) for f in (4 / 7, 2 / 7)]
    return [*sizes, max(1, budget - sum(sizes))]


class CachedScorer:
    """The run's merged-proxy scorer with a cache by mixture key (identical proxies, same scores)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer, self.cache, self.calls = scorer, {}, 0

    def __call__(self, mixture: dict[str, float]) -> Any:
        from demix.mixtures import mixture_key

        key = mixture_key(mixture)
        if key not in self.cache:
            self.calls += 1
            self.cache[key] = self.scorer(mixture)
        return self.cache[key]


def objective(result: Any) -> float:
    """The ``weighted`` objective with equal weights: the mean capability."""
    return float(np.mean(list(result.capabilities.values())))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense", type=int, default=400)
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 35])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--delta-scale", type=float, default=0.05,
                    help="size of the components' random deltas (tests/tiny_run.py; larger: a more curved landscape)")
    ap.add_argument("--strategies", nargs="+", default=["paper", "ucb"], choices=["paper", "ucb"])
    args = ap.parse_args()
    logging.getLogger("demix").setLevel(logging.WARNING)

    from demix.config import config_from_dict
    from demix.executors import ProxyScorerFactory
    from demix.mixtures import prior_weights
    from demix.rundir import RunDir, read_token_counts
    from demix.sampling import resolve_bounds, sample_mixtures
    from demix.search import run_search
    from tiny_run import build_tiny_run

    with tempfile.TemporaryDirectory() as tmp:
        config, run = build_tiny_run(Path(tmp) / "tiny", delta_scale=args.delta_scale)
        domains = config.data.domain_names
        scorer = CachedScorer(ProxyScorerFactory.from_run(config, run, "cpu")())
        t0 = time.perf_counter()
        tokens = read_token_counts(run, domains)
        # The search's own sampling space (bounds, token prior): the dense set covers what it can choose.
        bounds = resolve_bounds(domains, config.search.bounds, tokens)
        prior = prior_weights(domains, config.search.sampler.prior, tokens)
        dense = sample_mixtures(domains, args.dense, prior, config.search.sampler, bounds, np.random.default_rng(12345))
        truth = np.array([objective(scorer(dict(zip(domains, map(float, w))))) for w in dense])
        best = float(truth.max())
        print(f"dense ground truth: {args.dense} merged proxies in {time.perf_counter() - t0:.1f} s; best objective "
              f"{best:.5f} (median {np.median(truth):.5f}, worst {truth.min():.5f})")

        raw = config.model_dump(mode="json")
        table: dict[tuple[str, int], list[tuple[float, int]]] = {}
        for strategy in args.strategies:
            for budget in args.budgets:
                for seed in args.seeds:
                    search = {**raw["search"], "rounds": rounds_for(budget), "pool_size": 4000, "top_k": 50,
                              "objective": "weighted", "seed": seed, "cv_folds": 3}
                    if strategy == "ucb":
                        search |= {"planner": "ucb", "predictor_intervals": 8, "ucb_beta": 1.0}
                    out = Path(tmp) / f"{strategy}_{budget}_{seed}"
                    cfg = config_from_dict({**raw, "output_dir": str(out), "search": search})
                    # The search's own directory and store; the proxies are the tiny run's (the scorer).
                    result = run_search(cfg, RunDir(out), scorer, tokens)
                    assert result.evaluations == budget, (result.evaluations, budget)
                    value = objective(scorer(result.component_weights))
                    table.setdefault((strategy, budget), []).append((best - value, 1 + int((truth > value).sum())))
        print(f"\n{scorer.calls} distinct merged proxies evaluated in {time.perf_counter() - t0:.1f} s\n")
        print("| strategy | evaluations | mean regret | regret per seed | rank among dense |")
        print("|---|---|---|---|---|")
        for (strategy, budget), rows in table.items():
            regrets = [r for r, _ in rows]
            print(f"| {strategy} | {budget} | {np.mean(regrets):.5f} | {', '.join(f'{r:.5f}' for r in regrets)} | "
                  f"{', '.join(str(k) for _, k in rows)} |")


if __name__ == "__main__":
    main()
