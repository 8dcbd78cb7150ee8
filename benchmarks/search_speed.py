"""Time the search's CPU work: sample a 200k candidate pool, fit predictors on 512 evaluations,
rank the pool. Target (issue 5): pool + fit + rank <= 10 s on 2 cores.

Peers measured in the same run: the public DeMix scripts' clip-and-rescale bounded sampler
(its speed and the share of its samples that break their bounds), and LightGBM's own
``Booster.predict`` on the same pool (demix ranks with a compiled tree walk, predictors.TreeEnsemble).
The machine is shared: wall and CPU seconds are both printed.

usage: python benchmarks/search_speed.py [--domains 8] [--pool 200000] [--evals 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from demix.config import BoundsConfig, SamplerConfig
from demix.mixtures import prior_weights
from demix.objectives import objective_values, select_top_k
from demix.predictors import fit_predictors
from demix.sampling import clip_and_rescale_sample, resolve_bounds, sample_mixtures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domains", type=int, default=8)
    ap.add_argument("--pool", type=int, default=200_000)
    ap.add_argument("--evals", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=1280)
    args = ap.parse_args()

    domains = [f"d{i}" for i in range(args.domains)]
    rng = np.random.default_rng(0)
    tokens = {d: float(t) for d, t in zip(domains, rng.lognormal(20, 1, args.domains))}
    prior = prior_weights(domains, "tokens", tokens)
    # Realistic bounds: an epoch cap from the data size, a floor on the first domain.
    bounds = resolve_bounds(domains, BoundsConfig(lower={domains[0]: 0.1}, max_epochs=3.0), tokens)
    sampler = SamplerConfig()
    times: dict[str, tuple[float, float]] = {}

    class timed:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            self.t, self.c = time.perf_counter(), time.process_time()

        def __exit__(self, *exc):
            times[self.name] = (time.perf_counter() - self.t, time.process_time() - self.c)

    with timed("sample pool"):
        pool = sample_mixtures(domains, args.pool, prior, sampler, bounds, 0)

    t = time.perf_counter()
    theirs = clip_and_rescale_sample(args.pool, prior, bounds, rng=np.random.default_rng(0))
    peer_time = time.perf_counter() - t

    # 512 evaluated mixtures: 3 capabilities and one benchmark per domain, smooth + noise.
    X = sample_mixtures(domains, args.evals, prior, sampler, bounds, 1)
    A = np.random.default_rng(2).normal(size=(args.domains, 3))
    caps = {f"cap{j}": np.sqrt(X) @ A[:, j] + rng.normal(0, 0.01, args.evals) for j in range(3)}
    benches = {f"bench_{d}": -np.log(X[:, i] + 0.01) + rng.normal(0, 0.01, args.evals) for i, d in enumerate(domains)}

    fit_name = f"fit {len(caps) + len(benches)} predictors (LightGBM, {args.evals} evals)"
    with timed(fit_name):
        cap_fit = fit_predictors(X, caps, "lightgbm", domains)
        fit_predictors(X, benches, "lightgbm", domains)

    names = list(caps)
    cap_fit.predict(pool[:10])  # compile the tree kernel outside the timing (numba caches it on disk)
    rank_name = f"rank pool ({len(names)} capabilities, top-{args.top_k})"
    with timed(rank_name):
        scores = cap_fit.predict_matrix(pool, names)
        values = objective_values("rank_mean", scores, names)
        select_top_k(pool, values, args.top_k)
    t, c = time.perf_counter(), time.process_time()
    lgb_scores = np.stack([cap_fit.models[n].predict(pool) for n in names], axis=1)
    lgb_time = (time.perf_counter() - t, time.process_time() - c)
    assert np.array_equal(lgb_scores, scores), "compiled trees disagree with LightGBM"

    total = sum(w for w, _ in times.values())
    total_cpu = sum(c for _, c in times.values())
    print(f"{'step':<48} {'wall s':>8} {'cpu s':>8}")
    for k, (w, c) in times.items():
        print(f"{k:<48} {w:8.2f} {c:8.2f}")
    print(f"{'total (target <= 10 s)':<48} {total:8.2f} {total_cpu:8.2f}   wall / target: {total / 10:.2f}")
    print()
    w, c = times[rank_name]
    print(f"{'pool prediction':<28} {'wall s':>8} {'cpu s':>8}")
    print(f"{'demix compiled trees':<28} {w:8.2f} {c:8.2f}")
    print(f"{'LightGBM Booster.predict':<28} {lgb_time[0]:8.2f} {lgb_time[1]:8.2f}")
    print(f"CPU-time ratio LightGBM / demix: {lgb_time[1] / c:.1f}x (identical predictions)")
    print()
    ours_ok = bounds.contains(pool).mean()
    theirs_ok = bounds.contains(theirs).mean()
    print(f"{'sampler':<28} {'wall s':>8} {'inside bounds':>14}")
    print(f"{'demix (exact bounds)':<28} {times['sample pool'][0]:8.2f} {ours_ok:14.2%}")
    print(f"{'clip-and-rescale (peer)':<28} {peer_time:8.2f} {theirs_ok:14.2%}")


if __name__ == "__main__":
    main()
