"""Evidence reuse: which stored merged evaluations are still exact proxies of the run's current
base and components, after domains were added or removed and components retrained.

A merged proxy of component weights ``a`` is ``base + sum_i a_i (theta_i - base)``: it depends
on the base and on the components with non-zero weight only. So a stored evaluation is

- **valid** when the base and each component it gave non-zero weight are the ones on disk now
  (same :func:`~demix.checkpoints.weights_hash`). A domain added since is a component at weight
  0 in it: the row enters the fit with 0 there, and its mixture key is unchanged (keys drop
  zero weights), so it is never evaluated again;
- **set aside** (kept in the store, never fitted) when it gave non-zero weight to a domain the
  run no longer has;
- **stale** when the base, or a component it gave non-zero weight, was retrained or replaced:
  kept in the store, never fitted, and evaluated again (its row replaced in place) when the
  search plans its mixture again.

Every merged evaluation records ``checkpoints`` in its provenance: ``{"base": hash,
"components": {domain: hash}}`` for the domains it gave non-zero weight (:meth:`Checkpoints.record`).
Rows of demix < 0.3 carry only ``components``, a fingerprint of the whole set (sizes and times
of the files, :func:`~demix.checkpoints.components_fingerprint`): such a row is valid when that
fingerprint, computed now over the base and the components of the row's own domains, is the
same; the search then writes the per-component record into it (:func:`migrate`), so later
changes are judged per component.

:func:`standing_of_run` (what `demix status` prints) adds, for the search's valid rows, those
scored under other evaluation or merge settings (by what changed: the search refuses them until
``--rescore``) and those scored before benchmarks were added (kept).

Hashing reads every byte of a checkpoint once; the hash is cached in the run's
``search/checkpoint_hashes.json`` under the files' sizes and modification times, so a resumed
search reads no weights unless a checkpoint changed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demix.checkpoints import base_dir, component_dirs, components_fingerprint_of, same_weights, weights_hash
from demix.store import Evaluation, Store

if TYPE_CHECKING:
    from demix.config import RunConfig
    from demix.rundir import RunDir
    from demix.search.settings import ScoringSettings

log = logging.getLogger("demix.search")

#: Provenance key of the per-component record of a merged evaluation.
CHECKPOINTS_KEY = "checkpoints"
#: Provenance key of the whole-set fingerprint (what demix < 0.3 recorded, still written).
LEGACY_KEY = "components"

VALID = "valid"
REMOVED_DOMAIN = "set aside: non-zero weight on a removed domain"
STALE_COMPONENT = "stale: a component it used was retrained or replaced"
STALE_BASE = "stale: the base was retrained or replaced"
STALE_WHOLE_SET = "stale: made with other checkpoints (recorded as a whole-set fingerprint)"
#: Every reason a row is not valid, in the order `demix status` lists them.
REASONS = (REMOVED_DOMAIN, STALE_BASE, STALE_COMPONENT, STALE_WHOLE_SET)

#: Weights are compared as the store's mixture keys compare them (rounded to 6 decimals).
_DIGITS = 6


def used_domains(weights: Mapping[str, float]) -> list[str]:
    """The domains a mixture gives non-zero weight (as its mixture key sees them), sorted."""
    return sorted(d for d, w in weights.items() if round(float(w), _DIGITS) != 0)


def _files_signature(path: Path) -> list[list[Any]]:
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.glob("*.safetensors"))]


class _HashCache:
    """weights_hash per checkpoint directory, kept while its files' sizes and times are unchanged."""

    def __init__(self, file: Path | None) -> None:
        from demix.rundir import read_json

        self.file = file
        self.entries: dict[str, Any] = {}
        if file is not None and file.is_file():
            try:
                data = read_json(file)
                self.entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.entries = {}  # a garbled cache only costs hashing again
        self.changed = False

    def hash(self, path: Path) -> str | None:
        if not path.is_dir():
            return None
        signature = _files_signature(path)
        if not signature:
            return None
        key = str(path.resolve())
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("files") == signature and isinstance(entry.get("hash"), str):
            return str(entry["hash"])
        digest = weights_hash(path)
        self.entries[key] = {"files": signature, "hash": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        from demix.rundir import write_json

        if self.changed and self.file is not None:
            write_json(self.file, self.entries)
            self.changed = False


@dataclass(frozen=True)
class Checkpoints:
    """The weights hash of the run's base and of each domain's component, as they are on disk
    now (None for a checkpoint that has no weights yet)."""

    base: str | None
    components: dict[str, str | None]

    @property
    def any(self) -> bool:
        """False for a run without checkpoints (a search on a synthetic scorer): nothing to compare."""
        return self.base is not None or any(v is not None for v in self.components.values())

    def record(self, weights: Mapping[str, float]) -> dict[str, Any]:
        """What an evaluation of ``weights`` records: the base and each component with non-zero weight."""
        return {"base": self.base, "components": {d: self.components.get(d) for d in used_domains(weights)}}


def current_checkpoints(config: RunConfig, run: RunDir) -> Checkpoints:
    """The :class:`Checkpoints` of the run now (hashes cached in ``search/checkpoint_hashes.json``)."""
    cache = _HashCache(run.checkpoint_hashes)
    found = Checkpoints(cache.hash(base_dir(config, run)),
                        {d: cache.hash(p) for d, p in component_dirs(config, run).items()})
    if found.any:
        cache.save()
    return found


def _same(a: str | None, b: str | None) -> bool:
    return (a is None and b is None) or same_weights(a, b)


@dataclass
class Evidence:
    """Every stored merged evaluation judged against the run's current domains and checkpoints."""

    domains: list[str]
    checkpoints: Checkpoints
    verdicts: dict[str, str] = field(default_factory=dict)
    """mixture key -> :data:`VALID` or one of :data:`REASONS`."""
    detail: dict[str, list[str]] = field(default_factory=dict)
    """mixture key -> the domains behind its reason (removed domains, retrained components)."""
    to_migrate: list[Evaluation] = field(default_factory=list)
    """Valid rows of demix < 0.3 (whole-set fingerprint only) that get the per-component record."""
    _config: Any = None
    _run: Any = None

    @classmethod
    def judge(cls, config: RunConfig, run: RunDir, rows: Iterable[Evaluation],
              checkpoints: Checkpoints | None = None) -> Evidence:
        """Judge ``rows`` (merged evaluations) for this config's domains and checkpoints."""
        out = cls(list(config.data.domain_names), checkpoints or current_checkpoints(config, run), _config=config, _run=run)
        legacy: dict[tuple[str, ...], str | None] = {}
        for row in rows:
            reason, names = out._verdict(row, config, run, legacy)
            out.verdicts[row.mixture_key] = reason
            if names:
                out.detail[row.mixture_key] = names
        return out

    def _verdict(self, row: Evaluation, config: RunConfig, run: RunDir,
                 legacy: dict[tuple[str, ...], str | None]) -> tuple[str, list[str]]:
        used = used_domains(row.weights)
        removed = [d for d in used if d not in self.domains]
        if removed:
            return REMOVED_DOMAIN, removed
        if not self.checkpoints.any:
            return VALID, []
        record = row.provenance.get(CHECKPOINTS_KEY)
        if isinstance(record, Mapping):
            if not _same(record.get("base"), self.checkpoints.base):
                return STALE_BASE, []
            comps = record.get("components")
            recorded: Mapping[str, Any] = comps if isinstance(comps, Mapping) else {}
            changed = [d for d in used if not _same(recorded.get(d), self.checkpoints.components.get(d))]
            return (STALE_COMPONENT, changed) if changed else (VALID, [])
        fingerprint = row.provenance.get(LEGACY_KEY)
        if fingerprint is None:
            return VALID, []  # recorded nothing (as before fingerprints existed): accepted, as it always was
        own = [d for d in self.domains if d in row.weights]
        if any(d not in self.domains for d in row.weights):
            # A zero weight on a removed domain: the old set's order is lost, so its fingerprint
            # cannot be computed again.
            return STALE_WHOLE_SET, []
        key = tuple(own)
        if key not in legacy:
            legacy[key] = components_fingerprint_of(config, run, own)
        if legacy[key] != fingerprint:
            return STALE_WHOLE_SET, []
        self.to_migrate.append(row)
        return VALID, []

    def is_valid(self, row: Evaluation) -> bool:
        """True when ``row`` may be fitted (rows not judged here, e.g. stored since, are judged now)."""
        return self.reason(row) == VALID

    def reason(self, row: Evaluation) -> str:
        """:data:`VALID` or the reason ``row`` is set aside or stale."""
        if row.mixture_key not in self.verdicts:
            # Stored after judging (this search, or a driver beside it): judged on the same terms.
            self.verdicts[row.mixture_key], names = self._verdict(row, self._config, self._run, {})
            if names:
                self.detail[row.mixture_key] = names
        return self.verdicts[row.mixture_key]

    def set_aside(self, row: Evaluation) -> bool:
        """True for a row with non-zero weight on a removed domain: never planned nor fitted."""
        return self.reason(row) == REMOVED_DOMAIN

    def stale_keys(self) -> set[str]:
        """Keys of the rows made with a base or component that changed since (evaluated again when planned)."""
        return {k for k, r in self.verdicts.items() if r in (STALE_BASE, STALE_COMPONENT, STALE_WHOLE_SET)}

    def counts(self) -> dict[str, int]:
        """Rows per verdict (:data:`VALID` first, then :data:`REASONS`; zero counts left out)."""
        c = Counter(self.verdicts.values())
        return {r: c[r] for r in (VALID, *REASONS) if c[r]}

    def by_domain(self, reason: str) -> dict[str, int]:
        """For a reason: how many rows each domain is behind (a row may count for several)."""
        c: Counter[str] = Counter()
        for k, r in self.verdicts.items():
            if r == reason:
                c.update(self.detail.get(k, []))
        return dict(sorted(c.items()))

    def describe(self) -> str:
        """One line for the log: the counts, with the domains behind each reason."""
        parts = []
        for reason, n in self.counts().items():
            domains = self.by_domain(reason)
            parts.append(f"{n} {reason}" + (f" ({', '.join(f'{d}: {m}' for d, m in domains.items())})" if domains else ""))
        return "; ".join(parts) or "no stored evaluations"


def migrate(store: Store, evidence: Evidence, proxy_kind: str) -> int:
    """Write the per-component record into the valid rows of demix < 0.3 (whole-set fingerprint
    only), so that a later change of one component is judged per component. Returns how many."""
    n = 0
    for row in evidence.to_migrate:
        provenance = {**row.provenance, CHECKPOINTS_KEY: evidence.checkpoints.record(row.weights)}
        n += store.annotate(row.mixture_key, provenance, proxy_kind)
    evidence.to_migrate = []
    return n


def zero_extended(row: Evaluation, domains: Sequence[str]) -> dict[str, float]:
    """A valid row's component weights over ``domains``: 0 on a domain added since it was evaluated."""
    return {d: float(row.weights.get(d, 0.0)) for d in domains}


@dataclass
class Standing:
    """How a run directory's stored merged evaluations stand now (what `demix status` shows):
    per component (:class:`Evidence`) and, for the search's rows valid for the current
    components, per scoring setting (:class:`~demix.search.settings.ScoringSettings`)."""

    evidence: Evidence
    total: int
    """Finished evaluations judged."""
    other_settings: dict[tuple[str, ...], int] = field(default_factory=dict)
    """Settings changes (``key: old -> new``) -> rows scored under them: the search refuses
    these until ``--rescore`` evaluates them again."""
    benchmarks_added: dict[tuple[str, ...], int] = field(default_factory=dict)
    """Benchmarks and capabilities added since -> rows scored before (valid: each predictor is
    fitted on the rows that have its target)."""

    @property
    def other_settings_rows(self) -> int:
        return sum(self.other_settings.values())

    @property
    def benchmarks_added_rows(self) -> int:
        return sum(self.benchmarks_added.values())


def standing(config: RunConfig, run: RunDir, rows: Sequence[Evaluation]) -> Standing:
    """The :class:`Standing` of ``rows`` (merged evaluations) under ``config``. Settings are
    judged as the search judges them: on its own rows (not the fidelity stage's merged proxies)
    that are valid for the current components (the others are set aside or evaluated again
    anyway)."""
    from demix.search.settings import FINGERPRINT_KEY, ScoringSettings, is_search_row

    evidence = Evidence.judge(config, run, rows)
    out = Standing(evidence, len(rows))
    scoring = ScoringSettings.of(config)
    for row in rows:
        recorded = row.provenance.get(FINGERPRINT_KEY)
        if not (is_search_row(row) and evidence.is_valid(row)) or recorded is None or recorded == scoring.fingerprint:
            continue
        if scoring.only_adds(row):
            key = tuple(_added(scoring, row))
            out.benchmarks_added[key] = out.benchmarks_added.get(key, 0) + 1
        else:
            key = tuple(scoring.changes(row))
            out.other_settings[key] = out.other_settings.get(key, 0) + 1
    return out


def _added(scoring: ScoringSettings, row: Evaluation) -> list[str]:
    """The benchmarks, then the capabilities, of ``scoring`` that ``row``'s record lacks."""
    from demix.search.settings import BENCHMARKS, CAPABILITIES, VALUES_KEY

    old = row.provenance.get(VALUES_KEY) or {}

    def bench_names(values: Any) -> list[str]:
        return [str(b.get("name")) for b in values or [] if isinstance(b, Mapping)]

    have = set(bench_names(old.get(BENCHMARKS)))
    benches = [b for b in bench_names(scoring.values.get(BENCHMARKS)) if b not in have]
    caps = [f"capability {c}" for c in scoring.values.get(CAPABILITIES) or {} if c not in (old.get(CAPABILITIES) or {})]
    return benches + caps


def standing_of_run(run: RunDir, proxy_kind: str) -> Standing:
    """The :class:`Standing` of a run directory's store under its saved config (``config.yaml``):
    what `demix status` shows."""
    from demix.config import load_config

    config = load_config(run.config)
    with Store(config.store.url or run.store_url, lease_seconds=config.store.lease_seconds) as store:
        rows = store.evaluations_done(proxy_kind)
    return standing(config, run, rows)
