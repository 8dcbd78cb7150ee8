"""What the fidelity stage compares: the targets (every capability and every benchmark of the
run), the direction and scale of their scores, and the no-model baseline that ranks mixtures
by each domain's own weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from demix.config import RunConfig
from demix.fidelity.metrics import FidelityReport, compare
from demix.fidelity.models import ModelScores
from demix.fidelity.statistics import Target

OWN_WEIGHT = "own_weight"
"""Label of the no-model baseline (:func:`own_weight_baseline`)."""

BENCHMARK_PREFIX = "benchmark:"
"""Target names of single benchmarks (capabilities keep their own names)."""


def ratio_scale_capabilities(config: RunConfig) -> set[str]:
    """Capabilities made only of held-out ``bits_per_byte`` benchmarks. Their score is minus a
    weighted mean of bits per byte, so ``2 ** score`` is the weighted geometric-mean probability
    per byte: a ratio-scale score on which CRR means something, ranked exactly like the score."""
    from demix.evaluation import resolve_benchmarks, resolve_capabilities

    benchmarks = {b.name: b for b in resolve_benchmarks(config)}
    out = set()
    for cap in resolve_capabilities(config, list(benchmarks.values())):
        if all(benchmarks[n].evaluator == "heldout_loss" and benchmarks[n].metric == "bits_per_byte" for n in cap.weights):
            out.add(cap.name)
    return out


def target_order(config: RunConfig) -> list[str]:
    """Capability names, then benchmark names, in the config's order."""
    from demix.evaluation import resolve_benchmarks, resolve_capabilities

    benchmarks = resolve_benchmarks(config)
    return [c.name for c in resolve_capabilities(config, benchmarks)] + [b.name for b in benchmarks]


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
                   confidence=f.confidence, top_fraction=f.top_fraction)
