"""A smooth surrogate of the ``rank_mean`` objective at measured capability scores, for
``search.refine`` (:mod:`demix.search.refine`).

``rank_mean`` ranks a row of capability scores among a pool's predicted ones: a step function
of the scores, so of the mixture, with no useful gradient. The surrogate replaces each
capability's empirical CDF over the pool by a Gaussian-kernel CDF; its gradient gives the ascent
direction, while every proposal is still judged by the exact measured ``rank_mean``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Most pool candidates the surrogate's kernel CDFs are built on (a seeded subsample beyond it).
SURROGATE_POINTS = 4096


class RankSurrogate:
    """``rank_mean`` at measured capability scores, exactly and smoothly.

    ``pool`` (n, C) are the last round's predicted capabilities of its candidates (columns in
    ``capabilities`` order), ``weights`` the capability weights (sum 1). :meth:`exact` is the
    objective the ranking gives a row appended to the pool (percentile ranks, ties averaged);
    :meth:`smooth` / :meth:`gradient` replace each capability's empirical CDF by the mean of
    Gaussian CDFs centred at (up to :data:`SURROGATE_POINTS` of) the pool's predictions, with
    Silverman's bandwidth ``1.06 sd n^(-1/5)`` (floored at 1e-12 of the scale so a constant
    column stays finite)."""

    def __init__(self, pool: np.ndarray, capabilities: Sequence[str], weights: Mapping[str, float], seed: int = 0):
        self.pool = np.asarray(pool, dtype=np.float64)
        self.capabilities = list(capabilities)
        self.weights = np.array([float(weights.get(c, 0.0)) for c in self.capabilities])
        pts = self.pool
        if pts.shape[0] > SURROGATE_POINTS:
            pts = pts[np.random.default_rng([seed, 11]).choice(pts.shape[0], SURROGATE_POINTS, replace=False)]
        self.points = pts
        sd = pts.std(axis=0)
        scale = np.maximum(np.abs(pts).max(axis=0), 1.0)
        self.bandwidth = np.maximum(1.06 * sd * pts.shape[0] ** -0.2, 1e-12 * scale)

    def _row(self, scores: Mapping[str, float]) -> np.ndarray:
        return np.array([float(scores[c]) for c in self.capabilities])

    def exact(self, scores: Mapping[str, float]) -> float:
        """``rank_mean`` of the row among the pool (the measured objective a proposal is judged by)."""
        from demix.objectives import rank_mean

        return float(rank_mean(np.vstack([self.pool, self._row(scores)[None, :]]), self.weights)[-1])

    def smooth(self, scores: Mapping[str, float]) -> float:
        """``sum_c w_c F_c(score_c)``, the kernel-CDF surrogate."""
        from scipy.stats import norm

        z = (self._row(scores)[None, :] - self.points) / self.bandwidth
        return float(self.weights @ norm.cdf(z).mean(axis=0))

    def gradient(self, scores: Mapping[str, float], score_gradients: Mapping[str, np.ndarray]) -> np.ndarray:
        """d smooth / d a: ``sum_c w_c f_c(score_c) d score_c / d a`` (``score_gradients`` per capability, (K,))."""
        from scipy.stats import norm

        z = (self._row(scores)[None, :] - self.points) / self.bandwidth
        density = norm.pdf(z).mean(axis=0) / self.bandwidth
        return sum((w * f * np.asarray(score_gradients[c]) for c, w, f in zip(self.capabilities, self.weights, density)
                    if w > 0), np.zeros(len(next(iter(score_gradients.values())))))
