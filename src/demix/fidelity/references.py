"""Reference mixtures: the mixtures the fidelity stage trains reference models on, and the
recipes of the trained proxies it compares with the merged ones.

``fidelity.mixtures`` first, then ``fidelity.num_references`` sampled with the search's sampler
and bounds (seed ``fidelity.seed``). The sample depends only on the config and the domain token
counts, so a second run gets the same mixtures and reuses their trained models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from demix.config import RunConfig, TrainRecipe
from demix.errors import DemixError
from demix.mixtures import mixture_key, validate_mixture

REFERENCE_DRAWS = 4096
"""Candidates drawn for the sampled reference mixtures (the first ``num_references`` distinct
ones are used), fixed so that the sample of a smaller count is a prefix of a larger one's."""


@dataclass(frozen=True)
class ReferenceMixture:
    """One mixture the fidelity stage trains a reference model on."""

    key: str
    """``mixture_key`` of the weights: the id in the store, in model paths and in every report."""
    weights: dict[str, float]
    source: str
    """``given`` (fidelity.mixtures) or ``sampled``."""

    def to_dict(self) -> dict[str, Any]:
        """``{key, source, weights}``, as in ``mixtures.json`` and ``fidelity.json``."""
        return {"key": self.key, "source": self.source, "weights": self.weights}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceMixture:
        """The inverse of :meth:`to_dict`."""
        return cls(str(data["key"]), {str(d): float(w) for d, w in data["weights"].items()}, str(data["source"]))


def trained_budgets(config: RunConfig) -> list[int]:
    """Token budgets of the trained proxies compared (``fidelity.trained_proxy_budgets`` or
    ``train.trained_proxy.tokens``), sorted, without repeats."""
    return sorted(set(config.fidelity.trained_proxy_budgets or [config.train.trained_proxy.tokens]))


def trained_recipe(config: RunConfig, tokens: int) -> TrainRecipe:
    """The trained-proxy recipe (``train.trained_proxy``) with the token budget ``tokens``."""
    return config.train.trained_proxy.model_copy(update={"tokens": int(tokens)})


def reference_mixtures(config: RunConfig, token_counts: Mapping[str, float] | None) -> list[ReferenceMixture]:
    """The given mixtures, then ``num_references`` sampled ones (search sampler and bounds, seed
    ``fidelity.seed``); duplicates (same mixture key) are kept once.

    The sample depends only on the config and the domain token counts, so a second run gets the
    same mixtures and reuses its stored reference models.
    """
    out = _given_mixtures(config)
    seen = {m.key for m in out}
    if config.fidelity.num_references > 0:
        out += _sampled_mixtures(config, token_counts, seen)
    if not out:
        raise DemixError(
            "no reference mixtures: fidelity.mixtures is empty and fidelity.num_references is 0",
            "set fidelity.num_references (e.g. 8) or list mixtures in fidelity.mixtures",
        )
    return out


def _given_mixtures(config: RunConfig) -> list[ReferenceMixture]:
    domains = config.data.domain_names
    out: list[ReferenceMixture] = []
    seen: set[str] = set()
    for i, m in enumerate(config.fidelity.mixtures):
        try:
            w = validate_mixture(m, domains, normalize=config.merge.normalize)
        except DemixError as exc:
            raise DemixError(f"fidelity.mixtures[{i}]: {exc.what}", exc.fix) from None
        key = mixture_key(w)
        if key not in seen:
            seen.add(key)
            out.append(ReferenceMixture(key, w, "given"))
    return out


def _sampled_mixtures(
    config: RunConfig, token_counts: Mapping[str, float] | None, seen: set[str]
) -> list[ReferenceMixture]:
    """``fidelity.num_references`` sampled mixtures whose keys are not in ``seen``."""
    from demix.mixtures import prior_weights
    from demix.sampling import resolve_bounds, sample_mixtures

    domains = config.data.domain_names
    f, s = config.fidelity, config.search
    bounds = resolve_bounds(domains, s.bounds, token_counts, s.target_tokens)
    prior = prior_weights(domains, s.sampler.prior, token_counts)
    # A stream of its own ([seed, 7]) so the references never coincide with the search's plan by
    # construction. Always the same number of draws, so the first n are the same whatever n:
    # raising num_references adds references and keeps (and reuses) the earlier ones.
    draws = max(REFERENCE_DRAWS, 2 * f.num_references)
    rows = sample_mixtures(domains, draws, prior, s.sampler, bounds, np.random.default_rng([f.seed, 7]))
    out: list[ReferenceMixture] = []
    seen = set(seen)
    for row in rows:
        w = {d: float(x) for d, x in zip(domains, row)}
        key = mixture_key(w)
        if key not in seen:
            seen.add(key)
            out.append(ReferenceMixture(key, w, "sampled"))
            if len(out) == f.num_references:
                break
    return out
