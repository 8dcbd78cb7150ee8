"""Gradients through the merge checked against finite differences on the simplex.

The reference ``f`` is an fp64 merge, but transformers still rounds RMSNorm in fp32 inside an
fp64 model, so ``f`` carries ~1e-7 relative noise: a two-point difference drowns in it. A
least-squares polynomial through ``f(a + t v)`` at several ``t`` averages the noise and cancels
the truncation up to its degree; its linear coefficient is the directional derivative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np


def worst_directional_error(
    f: Callable[[np.ndarray], Mapping[str, float]],
    a: np.ndarray,
    grads: Mapping[str, tuple[float, np.ndarray]],
    domains: Sequence[str],
    ts: np.ndarray,
    degree: int,
    tolerance: float = 1e-3,
) -> float:
    """The worst relative error of ``g @ v`` against the fitted derivative of ``f`` along every
    ``v = e_i - e_j`` (every feasible direction on the simplex is a combination of these), for
    each named gradient ``grads[name] = (value, g)``; asserts each is below ``tolerance``."""
    worst = 0.0
    for i in range(len(domains)):
        for j in range(i + 1, len(domains)):
            v = np.zeros(len(domains))
            v[i], v[j] = 1.0, -1.0
            samples = [f(a + t * v) for t in ts]
            for name, (_, g) in grads.items():
                fd = np.polynomial.polynomial.polyfit(ts, [s[name] for s in samples], degree)[1]
                rel = abs(g @ v - fd) / abs(fd)
                worst = max(worst, rel)
                assert rel < tolerance, f"{name}, direction {domains[i]}-{domains[j]}: gradient {g @ v:.6g}, FD {fd:.6g}"
    return worst
