"""What the fidelity stage compares: the targets (every capability and every benchmark of the
run, plus the transfer corpora of :mod:`demix.fidelity.transfer`), the direction and scale of
their scores, their groups (``own``: a training domain's held-out loss; ``transfer``: the rest),
and the two no-model baselines: each domain's own weight (own targets), and the best single
linear rule of the weights fitted on the reference models in leave-one-out cross-validation
(every target; the only one that means anything on a transfer target).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from demix.config import RunConfig
from demix.fidelity.metrics import FidelityReport, compare
from demix.fidelity.models import ModelScores
from demix.fidelity.statistics import Target

OWN_WEIGHT = "own_weight"
"""Label of the no-model baseline (:func:`own_weight_baseline`)."""

LINEAR_RULE = "linear_rule"
"""Label of the cross-validated single-linear-rule baseline (:func:`linear_rule_baseline`)."""

OWN, TRANSFER = "own", "transfer"
"""Target groups: capabilities that are one training domain's held-out loss, and all others."""

BENCHMARK_PREFIX = "benchmark:"
"""Target names of single benchmarks (capabilities keep their own names)."""


def ratio_scale_capabilities(config: RunConfig) -> set[str]:
    """Capabilities made only of held-out ``bits_per_byte`` benchmarks. Their score is minus a
    weighted mean of bits per byte, so ``2 ** score`` is the weighted geometric-mean probability
    per byte: a ratio-scale score on which CRR means something, ranked exactly like the score."""
    from demix.evaluation import resolve_benchmarks, resolve_capabilities
    from demix.fidelity.transfer import transfer_benchmarks

    benchmarks = {b.name: b for b in resolve_benchmarks(config)}
    out = set(transfer_benchmarks(config))
    for cap in resolve_capabilities(config, list(benchmarks.values())):
        if all(benchmarks[n].evaluator == "heldout_loss" and benchmarks[n].metric == "bits_per_byte" for n in cap.weights):
            out.add(cap.name)
    return out


def target_order(config: RunConfig) -> list[str]:
    """Capability names, then benchmark names, in the config's order (transfer corpora after the
    run's own)."""
    from demix.evaluation import resolve_benchmarks, resolve_capabilities
    from demix.fidelity.transfer import transfer_benchmarks

    benchmarks = resolve_benchmarks(config)
    transfer = transfer_benchmarks(config)
    return ([c.name for c in resolve_capabilities(config, benchmarks)] + list(transfer)
            + [b.name for b in benchmarks] + list(transfer.values()))


def benchmark_directions(scored: Mapping[str, Mapping[str, ModelScores]], config: RunConfig) -> dict[str, bool]:
    """Benchmark name -> higher is better: from the evaluations (fresh or stored; ``scored`` is
    kind -> mixture key -> scores), else from the config."""
    from demix.evaluation import resolve_benchmarks

    out: dict[str, bool] = {b.name: b.higher_is_better for b in resolve_benchmarks(config) if b.higher_is_better is not None}
    for rows in scored.values():
        for s in rows.values():
            out.update(s.higher_is_better)
    return out


def fidelity_scores(
    scored: Mapping[str, ModelScores], ratio_caps: set[str], directions: Mapping[str, bool], order: Sequence[str] = ()
) -> tuple[dict[str, dict[str, float]], list[Target]]:
    """Target scores per mixture id and the targets: every capability (in the macro averages;
    those in ``ratio_caps`` as ``2 ** score``) and every benchmark (raw values, their direction),
    in ``order`` (capability and benchmark names of the config)."""
    out: dict[str, dict[str, float]] = {}
    for key, s in scored.items():
        row = {c: (2.0 ** v if c in ratio_caps else v) for c, v in s.capabilities.items()}
        for b, v in s.benchmarks.items():
            row[f"{BENCHMARK_PREFIX}{b}"] = v
        out[key] = row
    # Targets in the config's order (stored rows come back with sorted keys), so reports and
    # their macro averages never depend on where the scores came from.
    first = next(iter(scored.values()))
    targets = [Target(c, capability=True, higher_is_better=True, ratio_scale=True if c in ratio_caps else None)
               for c in _ordered(first.capabilities, order)]
    targets += [Target(f"{BENCHMARK_PREFIX}{b}", higher_is_better=bool(directions.get(b, True)))
                for b in _ordered(first.benchmarks, order)]
    return out, targets


def _ordered(names: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def own_domain_capabilities(config: RunConfig) -> dict[str, str]:
    """Capability -> domain, for capabilities made only of held-out benchmarks of one domain
    (the default capabilities: one per domain)."""
    from demix.evaluation import resolve_benchmarks, resolve_capabilities

    benchmarks = {b.name: b for b in resolve_benchmarks(config)}
    out = {}
    for cap in resolve_capabilities(config, list(benchmarks.values())):
        domains = {benchmarks[n].heldout_domain for n in cap.weights if benchmarks[n].evaluator == "heldout_loss"}
        if len(domains) == 1 and all(benchmarks[n].evaluator == "heldout_loss" for n in cap.weights):
            out[cap.name] = domains.pop()
    return out


def own_weight_baseline(
    config: RunConfig,
    weights: Mapping[str, Mapping[str, float]],
    reference_scores: Mapping[str, Mapping[str, float]],
    targets: Sequence[Target],
    groups: Mapping[str, Sequence[str]] | None = None,
) -> FidelityReport | None:
    """The no-model baseline: rank the mixtures on a domain's held-out capability by that
    domain's own weight in the mixture, and compare with the reference models like a proxy.

    It costs nothing, so a proxy is only informative where it beats it. On held-out loss of
    well-separated domains it is hard to beat (more of a domain's tokens lower its loss almost
    monotonically); then the benchmarks cannot tell proxies apart, whatever their compute.
    None when no capability is a single domain's held-out score. CRR is left undefined
    (weights and scores are on different scales)."""
    own = own_domain_capabilities(config)
    chosen = [Target(t.name, capability=True, higher_is_better=True, ratio_scale=False)
              for t in targets if t.capability and t.name in own]
    if not chosen:
        return None
    proxy = {key: {t.name: float(w[own[t.name]]) for t in chosen} for key, w in weights.items()}
    reference = {key: {t.name: row[t.name] for t in chosen} for key, row in reference_scores.items()}
    f = config.fidelity
    return compare(reference, proxy, chosen, proxy_kind=OWN_WEIGHT, bootstrap=f.bootstrap, seed=f.seed,
                   confidence=f.confidence, top_fraction=f.top_fraction, groups=groups)


def target_groups(config: RunConfig, capabilities: Sequence[str]) -> dict[str, list[str]]:
    """``{own: [...], transfer: [...]}``: ``capabilities`` split into those that are one training
    domain's held-out loss (:func:`own_domain_capabilities`) and the others (lm-eval tasks,
    transfer corpora, capabilities mixing domains), in the given order; empty groups left out."""
    own = own_domain_capabilities(config)
    groups = {OWN: [c for c in capabilities if c in own], TRANSFER: [c for c in capabilities if c not in own]}
    return {g: names for g, names in groups.items() if names}


def loo_single_rule(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Leave-one-out predictions of ``y`` (n,) from the best single linear rule of the columns of
    ``x`` (n, K): for each left-out point, every ``y = a + b x_j`` is fitted by least squares on
    the other points, the column with the smallest residual sum of squares is kept (all rules
    have two parameters, so the training error is a fair choice) and it predicts the left-out
    point. Returns (predictions, the chosen column per point; -1 where no column varies and the
    training mean is predicted). Needs n >= 3."""
    n, k = x.shape
    pred = np.empty(n)
    chosen: list[int] = []
    for i in range(n):
        keep = np.arange(n) != i
        xs, ys = x[keep], y[keep]
        best, best_sse, best_fit = -1, math.inf, (float(ys.mean()), 0.0)
        for j in range(k):
            xj = xs[:, j]
            var = float(((xj - xj.mean()) ** 2).sum())
            if var <= 1e-15:
                continue
            b = float(((xj - xj.mean()) * (ys - ys.mean())).sum()) / var
            a = float(ys.mean()) - b * float(xj.mean())
            sse = float(((ys - a - b * xj) ** 2).sum())
            if sse < best_sse - 1e-15:
                best, best_sse, best_fit = j, sse, (a, b)
        pred[i] = best_fit[0] + best_fit[1] * (x[i, best] if best >= 0 else 0.0)
        chosen.append(best)
    return pred, chosen


def linear_rule_baseline(
    config: RunConfig,
    weights: Mapping[str, Mapping[str, float]],
    reference_scores: Mapping[str, Mapping[str, float]],
    targets: Sequence[Target],
    groups: Mapping[str, Sequence[str]] | None = None,
) -> tuple[FidelityReport | None, dict[str, str]]:
    """The no-model baseline of every target: out-of-fold predictions of the reference scores by
    the best single linear rule of the data-mixture weights (:func:`loo_single_rule`), compared
    with the reference models like a proxy. It knows the reference scores of the other
    mixtures, so a proxy that does not beat it adds nothing a dozen reference models and a ruler
    would not give. CRR is left undefined (the rule is fitted to the references' level).

    Returns (report, target -> the rule chosen most often, e.g. ``"+code (11/12 folds)"``);
    (None, {}) with fewer than 3 mixtures."""
    keys = sorted(reference_scores)
    if len(keys) < 3:
        return None, {}
    domains = list(config.data.domain_names)
    x = np.array([[float(weights[k].get(d, 0.0)) for d in domains] for k in keys])
    chosen_targets = [Target(t.name, capability=t.capability, higher_is_better=t.higher_is_better, ratio_scale=False)
                      for t in targets]
    proxy: dict[str, dict[str, float]] = {k: {} for k in keys}
    rules: dict[str, str] = {}
    for t in chosen_targets:
        y = np.array([float(reference_scores[k][t.name]) for k in keys])
        pred, cols = loo_single_rule(x, y)
        for k, v in zip(keys, pred):
            proxy[k][t.name] = float(v)
        top = max(set(cols), key=cols.count)
        if top >= 0:
            # The sign of the rule fitted on all mixtures, for the label only.
            xj = x[:, top]
            slope = float(np.polyfit(xj, y, 1)[0]) if float(xj.std()) > 0 else 0.0
            rules[t.name] = f"{'+' if slope >= 0 else '-'}{domains[top]} ({cols.count(top)}/{len(keys)} folds)"
        else:
            rules[t.name] = f"mean ({cols.count(top)}/{len(keys)} folds)"
    reference = {k: {t.name: reference_scores[k][t.name] for t in chosen_targets} for k in keys}
    f = config.fidelity
    report = compare(reference, proxy, chosen_targets, proxy_kind=LINEAR_RULE, bootstrap=f.bootstrap, seed=f.seed,
                     confidence=f.confidence, top_fraction=f.top_fraction, groups=groups)
    return report, rules
