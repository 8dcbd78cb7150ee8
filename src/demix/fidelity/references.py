"""Reference mixtures: the pairs (component weights of a merged proxy, data mixture its reference
model is trained on) the fidelity stage compares, and the recipes of the trained proxies.

A merged proxy is built from *component weights* ``a``; under DeMix's linear approximation it
stands for a model trained on the *data mixture* ``data(a) = sum_i a_i m_i``
(:class:`demix.data_mixture.MixtureMap`). ``fidelity.pairing`` says what its reference model is
trained on:

- ``data_mixture`` (the default): ``data(a)``, the data the proxy stands for. ``fidelity.mixtures``
  are then data mixtures, mapped to the component weights that stand for them (one outside the
  reachable data mixtures is an error);
- ``component_weights``: ``a`` itself taken as a data mixture (the pairing before 0.2, kept for
  comparison). ``fidelity.mixtures`` are then component weights.

``fidelity.mixtures`` first, then ``fidelity.num_references`` component weights sampled with the
search's sampler and bounds (seed ``fidelity.seed``), the same in both pairings. The sample
depends only on the config, the domain token counts and the mapping, so a second run gets the
same mixtures and reuses their trained models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from demix.config import RegisteredReference, RunConfig, TrainRecipe
from demix.data_mixture import MixtureMap
from demix.errors import DemixError
from demix.mixtures import mixture_key, validate_mixture

if TYPE_CHECKING:
    from demix.sampling import Bounds

REFERENCE_DRAWS = 4096
"""Candidates drawn for the sampled reference mixtures (the first ``num_references`` distinct
ones are used), fixed so that the sample of a smaller count is a prefix of a larger one's."""

DATA_MIXTURE = "data_mixture"
"""Pairing: the reference model is trained on the data mixture the merged proxy stands for."""
COMPONENT_WEIGHTS = "component_weights"
"""Pairing: the reference model is trained on the component weights taken as a data mixture (before 0.2)."""
PAIRINGS = (DATA_MIXTURE, COMPONENT_WEIGHTS)


@dataclass(frozen=True)
class ReferenceMixture:
    """One comparison of the fidelity stage: the merged proxy of ``component_weights`` (and the
    trained proxies and reference model of ``data_mixture``)."""

    key: str
    """``mixture_key`` of the component weights: the id in every report (and the merged proxy's
    key in the store, as the search's)."""
    component_weights: dict[str, float]
    """The merge coefficients of the merged proxy."""
    data_mixture: dict[str, float]
    """Token shares the reference model and the trained proxies are trained on: ``data(a)``
    under the data_mixture pairing, the component weights under component_weights."""
    source: str
    """``registered`` (fidelity.references), ``given`` (fidelity.mixtures) or ``sampled``."""
    model_path: str | None = None
    """The registered reference model's directory (``fidelity.references``), evaluated and never
    trained; None for a reference the stage trains into ``models/references/<data key>``."""

    @property
    def data_key(self) -> str:
        """``mixture_key`` of the data mixture: the reference model's and trained proxies' key in
        the store and in model paths (``models/references/<data key>``), whichever pairing led to it."""
        return mixture_key(self.data_mixture)

    def to_dict(self) -> dict[str, Any]:
        """``{key, data_key, source, component_weights, data_mixture}`` (and ``model_path`` for a
        registered reference model), as in ``mixtures.json`` and ``fidelity.json``."""
        out: dict[str, Any] = {"key": self.key, "data_key": self.data_key, "source": self.source,
                               "component_weights": self.component_weights, "data_mixture": self.data_mixture}
        if self.model_path is not None:
            out["model_path"] = self.model_path
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceMixture:
        """The inverse of :meth:`to_dict`; also reads the files of demix before 0.2, whose
        ``weights`` were the component weights and the reference's data mixture at once."""
        if "component_weights" in data:
            a, d = data["component_weights"], data["data_mixture"]
        else:
            a = d = data["weights"]
        path = data.get("model_path")
        return cls(str(data["key"]), _floats(a), _floats(d), str(data["source"]), None if path is None else str(path))


def _floats(mixture: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in mixture.items()}


def trained_budgets(config: RunConfig) -> list[int]:
    """Token budgets of the trained proxies compared (``fidelity.trained_proxy_budgets`` or
    ``train.trained_proxy.tokens``), sorted, without repeats; none when ``fidelity.train_proxies``
    is off."""
    if not config.fidelity.train_proxies:
        return []
    return sorted(set(config.fidelity.trained_proxy_budgets or [config.train.trained_proxy.tokens]))


def trained_recipe(config: RunConfig, tokens: int) -> TrainRecipe:
    """The trained-proxy recipe (``train.trained_proxy``) with the token budget ``tokens``."""
    return config.train.trained_proxy.model_copy(update={"tokens": int(tokens)})


def reference_mixtures(
    config: RunConfig, token_counts: Mapping[str, float] | None, mapping: MixtureMap
) -> list[ReferenceMixture]:
    """The given mixtures, then ``num_references`` sampled ones (search sampler and bounds, seed
    ``fidelity.seed``), each paired with its data mixture as ``fidelity.pairing`` says;
    duplicates (same component weights) are kept once. ``mapping`` is the run's map from
    component weights to data mixtures (:func:`demix.training.roles.mixture_map`).

    The registered reference models (``fidelity.references``) come first: their data mixtures
    are mapped onto the component weights that stand for them like ``fidelity.mixtures``.

    The sample depends only on the config, the domain token counts and the mapping, so a second
    run gets the same mixtures and reuses its stored reference models.
    """
    if tuple(mapping.domains) != tuple(config.data.domain_names):
        raise DemixError(
            f"the mixture map is over the domains {list(mapping.domains)}, the run's are {config.data.domain_names}",
            "build it with demix.training.roles.mixture_map(config, run)",
        )
    out = _registered_mixtures(config, mapping)
    seen = {m.key for m in out}
    out += [m for m in _given_mixtures(config, mapping) if m.key not in seen]
    seen |= {m.key for m in out}
    if config.fidelity.num_references > 0:
        out += _sampled_mixtures(config, token_counts, mapping, seen)
    if not out:
        raise DemixError(
            "no reference mixtures: fidelity.references and fidelity.mixtures are empty and fidelity.num_references is 0",
            "set fidelity.num_references (e.g. 8), list mixtures in fidelity.mixtures or register reference models "
            "in fidelity.references",
        )
    return out


def paired(config: RunConfig, mapping: MixtureMap, weights: Mapping[str, float], source: str) -> ReferenceMixture:
    """The reference mixture of the component weights ``weights`` under ``fidelity.pairing``."""
    a = dict(weights)
    if config.fidelity.pairing == COMPONENT_WEIGHTS:
        return ReferenceMixture(mixture_key(a), a, dict(a), source)
    return ReferenceMixture(mixture_key(a), a, _normalised(mapping.data_of(a)), source)


def _normalised(mixture: Mapping[str, float]) -> dict[str, float]:
    # a @ M sums to 1 up to float rounding; the store and demix.json keep exact token shares.
    total = sum(mixture.values())
    return {d: float(w) / total for d, w in mixture.items()}


def _given_mixtures(config: RunConfig, mapping: MixtureMap) -> list[ReferenceMixture]:
    """``fidelity.mixtures``: data mixtures (pairing data_mixture) mapped onto the component
    weights that stand for them, or component weights (pairing component_weights)."""
    domains = config.data.domain_names
    out: list[ReferenceMixture] = []
    seen: set[str] = set()
    for i, m in enumerate(config.fidelity.mixtures):
        try:
            w = validate_mixture(m, domains, normalize=config.merge.normalize)
        except DemixError as exc:
            raise DemixError(f"fidelity.mixtures[{i}]: {exc.what}", exc.fix) from None
        if config.fidelity.pairing == COMPONENT_WEIGHTS:
            ref = ReferenceMixture(mixture_key(w), w, dict(w), "given")
        else:
            a = mapping.components_of(w)
            if a is None:
                shown = ", ".join(f"{d} {x:.4g}" for d, x in w.items())
                raise DemixError(
                    f"fidelity.mixtures[{i}] (a data mixture: {shown}) is not reachable by merging: the merged "
                    f"proxies stand for {mapping.region()}",
                    "give a data mixture inside that region, or set fidelity.pairing: component_weights to give "
                    "component weights instead",
                )
            ref = ReferenceMixture(mixture_key(a), a, w, "given")
        if ref.key not in seen:
            seen.add(ref.key)
            out.append(ref)
    return out


def registered_references(config: RunConfig) -> list[tuple[str, RegisteredReference]]:
    """(setting that names it, model) for every registered reference model: ``fidelity.references``,
    then each ``fidelity.reference_sets`` mixtures file's entries in file order (``{name}`` in
    its path template filled in; a missing folder left out with a warning under
    ``skip_missing``, else kept, so that the check names it). Reads the mixtures files only."""
    import json
    import logging

    out = [(f"fidelity.references[{i}]", r) for i, r in enumerate(config.fidelity.references)]
    for i, rs in enumerate(config.fidelity.reference_sets):
        where = f"fidelity.reference_sets[{i}]"
        try:
            data = json.loads(Path(rs.mixtures_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DemixError(
                f"{where}.mixtures_file '{rs.mixtures_file}' cannot be read as JSON ({exc})",
                "point it to a JSON object {name: {domain: token share}}",
            ) from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise DemixError(
                f"{where}.mixtures_file '{rs.mixtures_file}' is not a JSON object of mixtures",
                "write it as {name: {domain: token share}}",
            )
        if "{name}" not in rs.path:
            raise DemixError(f"{where}.path '{rs.path}' has no {{name}}", "write it as DIR/{name}")
        skipped = []
        for name, mixture in data.items():
            path = rs.path.replace("{name}", str(name))
            if rs.skip_missing and not Path(path).exists():
                skipped.append(str(name))
                continue
            try:
                ref = RegisteredReference(mixture=mixture, path=path, name=str(name))
            except ValueError as exc:
                raise DemixError(f"{where}: mixture '{name}' of '{rs.mixtures_file}' is not a mixture ({exc})") from None
            out.append((f"{where} '{name}'", ref))
        if skipped:
            logging.getLogger("demix.fidelity").warning(
                "%s: no model folder for mixture(s) %s of %s (skip_missing): left out", where, skipped, rs.mixtures_file
            )
    return out


def _registered_mixtures(config: RunConfig, mapping: MixtureMap) -> list[ReferenceMixture]:
    """``fidelity.references``: reference models trained elsewhere on known data mixtures. Their
    merged proxies are built at the component weights standing for each data mixture (under the
    component_weights pairing, at the data mixture taken as component weights); one merging
    cannot reach is an error naming the model and the region; two registered on the same data
    mixture are an error (which one is the ground truth?)."""
    domains = config.data.domain_names
    out: list[ReferenceMixture] = []
    by_data: dict[str, str] = {}
    for setting, ref in registered_references(config):
        where = f"{setting} ('{ref.path}')"
        try:
            w = validate_mixture(ref.mixture, domains, normalize=config.merge.normalize)
        except DemixError as exc:
            raise DemixError(f"{where}: {exc.what}", exc.fix) from None
        if mixture_key(w) in by_data:
            raise DemixError(
                f"{where} is registered on the same data mixture as '{by_data[mixture_key(w)]}'",
                "register one reference model per data mixture",
            )
        by_data[mixture_key(w)] = ref.path
        if config.fidelity.pairing == COMPONENT_WEIGHTS:
            a: dict[str, float] | None = dict(w)
        else:
            a = mapping.components_of(w)
        if a is None:
            shown = ", ".join(f"{d} {x:.4g}" for d, x in w.items())
            raise DemixError(
                f"the reference model {where} was trained on the data mixture {shown}, which merging cannot reach: "
                f"the merged proxies stand for {mapping.region()}",
                "remove it from fidelity.references (no merged proxy stands for its data), or train components with "
                "a lower train.components.general_share",
            )
        out.append(ReferenceMixture(mixture_key(a), a, w, "registered", str(ref.path)))
    return out


def _sampled_mixtures(
    config: RunConfig, token_counts: Mapping[str, float] | None, mapping: MixtureMap, seen: set[str]
) -> list[ReferenceMixture]:
    """``fidelity.num_references`` sampled component weights whose keys are not in ``seen``,
    paired with their data mixtures."""
    from demix.mixtures import prior_weights
    from demix.sampling import sample_mixtures

    domains = config.data.domain_names
    f, s = config.fidelity, config.search
    bounds = _search_bounds(config, token_counts, mapping)
    prior = prior_weights(domains, s.sampler.prior, token_counts)
    # A stream of its own ([seed, 7]) so the references never coincide with the search's plan by
    # construction. Always the same number of draws, so the first n are the same whatever n:
    # raising num_references adds references and keeps (and reuses) the earlier ones. The
    # component weights drawn do not depend on the pairing, so both pairings compare the same
    # merged proxies (only the reference models differ).
    draws = max(REFERENCE_DRAWS, 2 * f.num_references)
    rows = sample_mixtures(domains, draws, prior, s.sampler, bounds, np.random.default_rng([f.seed, 7]))
    out: list[ReferenceMixture] = []
    seen = set(seen)
    for row in rows:
        ref = paired(config, mapping, {d: float(x) for d, x in zip(domains, row)}, "sampled")
        if ref.key not in seen:
            seen.add(ref.key)
            out.append(ref)
            if len(out) == f.num_references:
                break
    return out


def _search_bounds(config: RunConfig, token_counts: Mapping[str, float] | None, mapping: MixtureMap) -> Bounds:
    """The search's bounds on the component weights, as the search resolves them
    (``search.bounds`` and ``max_epochs`` bound the data mixture; ``resolve_bounds`` maps them
    onto the component weights through ``mapping``)."""
    from demix.sampling import resolve_bounds

    s = config.search
    return resolve_bounds(config.data.domain_names, s.bounds, token_counts, s.target_tokens, mapping)
