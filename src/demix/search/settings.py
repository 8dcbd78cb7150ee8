"""What a stored score was made with, so that scores made under other settings are never fitted
together with this config's.

- :class:`ScoringSettings`: the evaluation settings that change a merged proxy's scores
  (:func:`demix.evaluation.benchmarks.scoring_settings`) and the merge settings that change the
  proxy itself (``merge.method``, ``params``, ``dtype``, ``normalize``; not ``shard_size``, which
  only `demix merge` uses). Every merged evaluation records their fingerprint (``settings``)
  and values (``scored_with``) in its provenance, beside the components fingerprint; a resumed
  search refuses rows with another fingerprint, naming what changed, except where the only
  change is benchmarks or capabilities added (:meth:`ScoringSettings.only_adds`). Rows written before the
  fingerprint existed carry none and are accepted, as they always were.
- :func:`ranking_fingerprint`: the search settings a round's fit and ranking depend on (with the
  components' training mixtures where the ranking reads them), recorded in each round's
  ``selection.json`` (a round's files are final only for the settings they record).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from demix.config import RunConfig
from demix.data_mixture import MixtureMap
from demix.errors import DemixError
from demix.store import Evaluation

#: Provenance keys of a merged evaluation: the fingerprint, and the values behind it.
FINGERPRINT_KEY = "settings"
VALUES_KEY = "scored_with"

#: How a user re-scores stored proxies under new settings (the Python API; see docs/search.md).
RESCORE_HINT = "`demix search CONFIG --rescore` evaluates them again under the new settings"


def digest(values: Any) -> str:
    """16 hex digits of the sha1 of ``values`` as canonical JSON."""
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScoringSettings:
    """The settings a merged proxy's scores depend on besides its mixture and the checkpoints."""

    values: dict[str, Any]
    """Config key -> value (``evaluation.heldout_tokens``, ``merge.method``, ...)."""

    @classmethod
    def of(cls, config: RunConfig, merged: bool = True) -> ScoringSettings:
        """The settings of a merged proxy's scores; with ``merged=False`` those of a trained
        model's (reference, trained proxy), which no merge setting changes."""
        from demix.evaluation.benchmarks import scoring_settings

        if not merged:
            return cls(dict(scoring_settings(config)))
        m = config.merge.model_dump(mode="json")
        merge = {f"merge.{k}": m[k] for k in ("method", "params", "dtype", "normalize")}
        return cls({**scoring_settings(config), **merge})

    @property
    def fingerprint(self) -> str:
        return digest(self.values)

    def provenance(self) -> dict[str, Any]:
        """What a stored evaluation records."""
        return {FINGERPRINT_KEY: self.fingerprint, VALUES_KEY: self.values}

    def is_stale(self, row: Evaluation) -> bool:
        """True when ``row`` was scored under other settings (rows without a record pass). A row
        scored under settings that differ only by benchmarks or capabilities added since (a
        domain added with the default held-out benchmarks) is not stale: every score it holds
        is the one these settings give; the predictors of the new benchmarks and capabilities
        are fitted on the rows that have them (:func:`demix.search.fitting.fit_all`)."""
        recorded = row.provenance.get(FINGERPRINT_KEY)
        return recorded is not None and recorded != self.fingerprint and not self.only_adds(row)

    def only_adds(self, row: Evaluation) -> bool:
        """True when this config's settings are ``row``'s with benchmarks or capabilities added:
        every other setting the same, each benchmark of the row's record here unchanged, each
        capability of the row's record here with the same benchmarks and weights."""
        old = row.provenance.get(VALUES_KEY)
        if not isinstance(old, Mapping):
            return False
        grown = (BENCHMARKS, CAPABILITIES)
        if set(old) != set(self.values) or any(_canon(old[k]) != _canon(self.values[k]) for k in old if k not in grown):
            return False
        old_b, new_b = old.get(BENCHMARKS), self.values.get(BENCHMARKS)
        old_c, new_c = old.get(CAPABILITIES), self.values.get(CAPABILITIES)
        if not (isinstance(old_b, list) and isinstance(new_b, list) and isinstance(old_c, Mapping)
                and isinstance(new_c, Mapping)):
            return False
        have = {_canon(b) for b in new_b}
        return (all(_canon(b) in have for b in old_b)
                and all(c in new_c and _canon(w) == _canon(new_c[c]) for c, w in old_c.items()))

    def stale(self, rows: Sequence[Evaluation]) -> list[Evaluation]:
        return [r for r in rows if self.is_stale(r)]

    def changes(self, row: Evaluation) -> list[str]:
        """``key: old -> new`` for every setting that differs from ``row``'s record."""
        old = row.provenance.get(VALUES_KEY)
        if not isinstance(old, Mapping):
            return ["settings recorded only as a fingerprint"]
        keys = sorted(set(old) | set(self.values))
        return [f"{k}: {_show(k, old.get(k))} -> {_show(k, self.values.get(k))}" for k in keys
                if json.dumps(old.get(k), sort_keys=True) != json.dumps(self.values.get(k), sort_keys=True)]

    def describe(self, rows: Sequence[Evaluation]) -> str:
        """The changes behind ``rows`` (stale rows), grouped by the settings they were made with."""
        groups: dict[str, list[Evaluation]] = {}
        for r in rows:
            groups.setdefault(str(r.provenance.get(FINGERPRINT_KEY)), []).append(r)
        return "; ".join(f"{len(g)} row(s) with {', '.join(self.changes(g[0]))}" for g in groups.values())

    def refuse(self, rows: Sequence[Evaluation], store_name: str) -> DemixError:
        """The error for a store holding ``rows`` of the search scored under other settings: their
        scores cannot be compared with this config's."""
        return DemixError(
            f"the store {store_name} holds {len(rows)} merged evaluation(s) scored under other settings than this "
            f"config's ({self.describe(rows)})",
            "restore the old value(s) in the config, or search with the new ones in a new output_dir; "
            f"or re-score the stored proxies: {RESCORE_HINT}",
        )


BENCHMARKS = "evaluation.benchmarks"
CAPABILITIES = "evaluation.capabilities"


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def is_search_row(row: Evaluation) -> bool:
    """True for an evaluation the search stored (its rounds are fitted on it); the fidelity
    stage's own merged proxies have neither a round nor the search as their source."""
    return row.round is not None or row.provenance.get("source") == "demix search"


def _show(key: str, value: Any) -> str:
    """A setting's value, short enough for a one-line message."""
    if key == "evaluation.benchmarks" and isinstance(value, list):
        value = [b.get("name") if isinstance(b, Mapping) else b for b in value]
    text = "unset" if value is None else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def ranking_reads_mapping(config: RunConfig) -> bool:
    """True when a round's ranking depends on the components' training mixtures (the map from
    component weights to the data mixture): through ``search.bounds`` (data shares), a
    ``weight.<domain>`` constraint (a data share) or a constraint comparing with ``natural`` /
    ``uniform`` (baselines defined as data mixtures). Otherwise the pool, its predictions and
    the top-k are the same whatever the map (they are all component weights)."""
    from demix.config import BoundsConfig
    from demix.objectives import reads_data_mixture

    return config.search.bounds != BoundsConfig() or any(map(reads_data_mixture, config.search.constraints))


#: search.* keys added after the fingerprint was first recorded, with their defaults (the
#: uncertainty-aware predictor and the ucb planner, :mod:`demix.search.acquisition`).
_LATER_DEFAULTS: dict[str, Any] = {
    "predictor_intervals": 0, "interval_level": 0.8, "planner": "paper", "ucb_beta": 1.0, "min_distance": 0.05,
}


def ranking_fingerprint(
    config: RunConfig, token_counts: Mapping[str, float] | None, mapping: MixtureMap | None = None
) -> str:
    """The search settings a round's fit and ranking depend on: ``search.*`` except ``rounds``
    (each round's size is checked against its ``planned.json``), ``refine`` and
    ``measure_chosen`` (after the last round), the domains and their token
    counts (bounds, prior, the natural mixture), and the matrix of ``mapping`` (each component's
    training mixture) where the ranking reads it (:func:`ranking_reads_mapping`): changing a
    declared training mixture then ranks the finished rounds again. Where it does not, the
    fingerprint is the one demix < 0.2 recorded, so a search of demix 0.1 reads its finished
    rounds back (they rank the same component weights)."""
    # refine and measure_chosen act after the last round: they change no round's fit or ranking.
    search = {k: v for k, v in config.search.model_dump(mode="json").items()
              if k not in ("rounds", "refine", "measure_chosen")}
    # Keys added since demix 0.2 count only when set, so a search made before them keeps its rounds.
    for k, default in _LATER_DEFAULTS.items():
        if search.get(k) == default:
            search.pop(k, None)
    if not config.search.screening.enabled:  # screening's other keys then change nothing
        search.pop("screening", None)
    counts = {d: float(token_counts[d]) for d in config.data.domain_names} if token_counts else None
    values: dict[str, Any] = {"search": search, "domains": config.data.domain_names, "token_counts": counts}
    if mapping is not None and ranking_reads_mapping(config):
        # Rounded: the same declared mixture read back from JSON or YAML gives the same digest.
        values["mapping"] = [[round(float(x), 12) for x in row] for row in mapping.matrix]
    return digest(values)
