"""The fidelity stage (`demix fidelity`): reference models, merged and trained proxies of the same
mixtures, and how well each kind of proxy ranks the mixtures like the reference models do.

For each reference mixture (``fidelity.mixtures`` plus ``fidelity.num_references`` sampled with
the search's sampler and bounds, seeded by ``fidelity.seed``):

1. a **reference model** is trained from the base with the reference recipe (``train.reference``,
   by default the components' recipe) into ``models/references/<mixture key>/`` and evaluated on
   the run's benchmarks; the scores go into the store as proxy kind ``reference``;
2. a **trained proxy** (the RegMix-style baseline) per budget in
   ``fidelity.trained_proxy_budgets`` (default ``train.trained_proxy.tokens``) is trained with
   the ``train.trained_proxy`` recipe at that budget into
   ``models/trained_proxies/<mixture key>@<tokens>/`` and stored as ``trained@<tokens>``;
3. the **merged proxy** is built in memory and evaluated (stored as ``merged``; an evaluation
   the search already stored for the same mixture is reused), and its weights are compared with
   the reference model's (:func:`demix.fidelity.audit.proxy_gap`).

Nothing is trained or evaluated twice: a mixture with a stored row is reused, and a finished
model directory is never retrained. Then :func:`demix.fidelity.metrics.compare` per proxy kind,
compute accounting (:mod:`demix.fidelity.compute`) and the merge-validity audit
(:mod:`demix.fidelity.audit`). Files written into ``<run>/fidelity/`` are listed in
docs/fidelity.md ("Files").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from demix.config import RunConfig, TrainRecipe
from demix.errors import DemixError
from demix.fidelity.metrics import FidelityReport, Statistic, Target, compare, paired_difference
from demix.mixtures import mixture_key, validate_mixture
from demix.rundir import RunDir, write_json

log = logging.getLogger("demix.fidelity")

#: Version of the files this stage writes (bumped when their layout changes).
FORMAT_VERSION = 1

REFERENCE = "reference"
MERGED = "merged"
OWN_WEIGHT = "own_weight"
"""Label of the no-model baseline (:func:`own_weight_baseline`)."""
REFERENCE_DRAWS = 4096
"""Candidates drawn for the sampled reference mixtures (the first ``num_references`` distinct
ones are used), fixed so that the sample of a smaller count is a prefix of a larger one's."""


def trained_kind(tokens: int) -> str:
    """Store proxy kind of a trained proxy with a ``tokens`` budget: ``trained@<tokens>``."""
    return f"trained@{int(tokens)}"


def trained_budgets(config: RunConfig) -> list[int]:
    """Token budgets of the trained proxies compared (``fidelity.trained_proxy_budgets`` or
    ``train.trained_proxy.tokens``), sorted, without repeats."""
    return sorted(set(config.fidelity.trained_proxy_budgets or [config.train.trained_proxy.tokens]))


def trained_recipe(config: RunConfig, tokens: int) -> TrainRecipe:
    """The trained-proxy recipe (``train.trained_proxy``) with the token budget ``tokens``."""
    return config.train.trained_proxy.model_copy(update={"tokens": int(tokens)})


# --------------------------------------------------------------------------- reference mixtures


@dataclass(frozen=True)
class ReferenceMixture:
    """One mixture the fidelity stage trains a reference model on."""

    key: str
    """``mixture_key`` of the weights: the id in the store, in model paths and in every report."""
    weights: dict[str, float]
    source: str
    """``given`` (fidelity.mixtures) or ``sampled``."""


def reference_mixtures(config: RunConfig, token_counts: Mapping[str, float] | None) -> list[ReferenceMixture]:
    """The given mixtures, then ``num_references`` sampled ones (search sampler and bounds, seed
    ``fidelity.seed``); duplicates (same mixture key) are kept once.

    The sample depends only on the config and the domain token counts, so a second run gets the
    same mixtures and reuses its stored reference models.
    """
    from demix.mixtures import prior_weights, resolve_bounds, sample_mixtures

    domains = config.data.domain_names
    f = config.fidelity
    out: list[ReferenceMixture] = []
    seen: set[str] = set()
    for i, m in enumerate(f.mixtures):
        try:
            w = validate_mixture(m, domains, normalize=config.merge.normalize)
        except DemixError as exc:
            raise DemixError(f"fidelity.mixtures[{i}]: {exc.what}", exc.fix) from None
        key = mixture_key(w)
        if key not in seen:
            seen.add(key)
            out.append(ReferenceMixture(key, w, "given"))
    if f.num_references > 0:
        s = config.search
        bounds = resolve_bounds(domains, s.bounds, token_counts, s.target_tokens)
        prior = prior_weights(domains, s.sampler.prior, token_counts)
        # A stream of its own ([seed, 7]) so the references never coincide with the search's plan by
        # construction. Always the same number of draws, so the first n are the same whatever n:
        # raising num_references adds references and keeps (and reuses) the earlier ones.
        draws = max(REFERENCE_DRAWS, 2 * f.num_references)
        rows = sample_mixtures(domains, draws, prior, s.sampler, bounds, np.random.default_rng([f.seed, 7]))
        sampled = 0
        for row in rows:
            w = {d: float(x) for d, x in zip(domains, row)}
            key = mixture_key(w)
            if key not in seen:
                seen.add(key)
                out.append(ReferenceMixture(key, w, "sampled"))
                sampled += 1
                if sampled == f.num_references:
                    break
    if not out:
        raise DemixError(
            "no reference mixtures: fidelity.mixtures is empty and fidelity.num_references is 0",
            "set fidelity.num_references (e.g. 8) or list mixtures in fidelity.mixtures",
        )
    return out


# --------------------------------------------------------------------------- scoring with reuse


@dataclass
class Scored:
    """Scores of one model (from the store, or just evaluated and stored)."""

    benchmarks: dict[str, float]
    capabilities: dict[str, float]
    higher_is_better: dict[str, bool]
    reused: bool
    trained: bool = False
    """True when the model was trained by this call."""


class ModelScorer:
    """Trains, evaluates and stores models on mixtures, reusing everything already done.

    Holds the store, and one evaluator built on first use (held-out windows prepared once).
    ``on_event(kind, key, action)`` is called after each model (``action``: trained, evaluated,
    reused) so a caller can print progress.
    """

    def __init__(
        self,
        config: RunConfig,
        run: RunDir,
        *,
        store: Any = None,
        device: str | None = None,
        progress: bool = True,
        on_event: Callable[[str, str, str], None] | None = None,
    ) -> None:
        from demix.store import Store

        self.config = config
        self.run = run
        self.device = device or config.evaluation.device
        self.progress = progress
        self.on_event = on_event or (lambda kind, key, action: None)
        self._own_store = store is None
        self.store = store if store is not None else Store(config.store.url or run.store_url)
        self._evaluator: Any = None
        self._expected: tuple[set[str], set[str]] | None = None
        self._components: str | None = None
        self.evaluations = 0
        """Evaluations run by this scorer (not read from the store)."""
        self.trainings = 0
        """Models trained by this scorer (not found finished on disk)."""

    def close(self) -> None:
        if self._own_store:
            self.store.close()

    @property
    def evaluator(self) -> Any:
        if self._evaluator is None:
            from demix.evaluation import Evaluator

            self._evaluator = Evaluator.from_run(self.config, self.run, self.device)
        return self._evaluator

    def _evaluate(self, model: Any) -> Any:
        self.evaluations += 1
        return self.evaluator.evaluate(model)

    @property
    def expected_names(self) -> tuple[set[str], set[str]]:
        """Benchmark and capability names the config asks for (a stored row with other names
        was scored on another benchmark set and is evaluated again)."""
        if self._expected is None:
            from demix.evaluation import resolve_benchmarks, resolve_capabilities

            benchmarks = resolve_benchmarks(self.config)
            caps = resolve_capabilities(self.config, benchmarks)
            self._expected = ({b.name for b in benchmarks}, {c.name for c in caps})
        return self._expected

    @property
    def components(self) -> str | None:
        """Fingerprint of the base and component checkpoints merged proxies are built from."""
        if self._components is None:
            from demix.search import component_fingerprint

            self._components = component_fingerprint(self.config, self.run) or ""
        return self._components or None

    def _stored(
        self, mixture: Mapping[str, float], kind: str, recipe: dict[str, Any] | None = None
    ) -> tuple[Scored | None, Any]:
        """(stored scores of ``mixture`` for ``kind``, stale row). Scores are None when there is
        no row, or when the row was scored on other benchmarks than the config's: then the stale
        row is returned, and the caller evaluates the same model again and passes it to
        :meth:`_save`, which replaces it."""
        row = self.store.get(mixture, kind)
        if row is None:
            return None, None
        had = row.provenance.get("recipe")
        if recipe is not None and had is not None and had != recipe:
            raise DemixError(
                f"the stored {kind} model of mixture {row.mixture_key} was trained with recipe {had}, "
                f"the config now says {recipe}",
                "restore the recipe in the config, or use a new output_dir for the new recipe",
            )
        if kind == MERGED and row.provenance.get("components") not in (None, self.components):
            raise DemixError(
                f"the stored merged proxy of mixture {row.mixture_key} was built from other components: the base "
                "or components were retrained or replaced since it was evaluated",
                "run the fidelity stage for the new components in a new output_dir, or delete this run's store "
                "to evaluate every proxy again",
            )
        benchmarks, capabilities = self.expected_names
        if set(row.benchmarks) != benchmarks or set(row.capabilities) != capabilities:
            log.info("%s %s was scored on other benchmarks (%s); evaluating it again",
                     kind, row.mixture_key, ", ".join(sorted(row.benchmarks)))
            return None, row
        hib = row.provenance.get("higher_is_better") or {}
        return Scored(dict(row.benchmarks), dict(row.capabilities), {k: bool(v) for k, v in hib.items()}, reused=True), None

    def _save(
        self, mixture: Mapping[str, float], kind: str, result: Any, provenance: dict[str, Any], stale: Any = None
    ) -> Scored:
        provenance = {**provenance, "higher_is_better": dict(result.higher_is_better), "source": "demix fidelity"}
        if stale is not None:
            # Same model, new benchmark set: the row is updated (keeping e.g. the search's round), never duplicated.
            self.store.replace(mixture, result.benchmarks, result.capabilities, kind, {**stale.provenance, **provenance})
        elif not self.store.add(mixture, result.benchmarks, result.capabilities, kind, None, provenance):
            # Another driver holds or finished this row meanwhile; our scores are still valid here.
            log.warning("mixture %s (%s) was stored by another process; using this evaluation unsaved", mixture_key(mixture), kind)
        return Scored(dict(result.benchmarks), dict(result.capabilities), dict(result.higher_is_better), reused=False)

    def trained_model(
        self, mixture: Mapping[str, float], kind: str, out_dir: Path, recipe: TrainRecipe, role: str
    ) -> Scored:
        """Scores of the model trained on ``mixture`` with ``recipe`` (store kind ``kind``):
        the stored row when there is one (nothing trained or evaluated), else train (or reuse a
        finished directory), evaluate and store."""
        key = mixture_key(mixture)
        want = _recipe_fingerprint(recipe)
        stored, stale = self._stored(mixture, kind, want)
        if stored is not None:
            self.on_event(kind, key, "reused")
            return stored
        from demix.training import load_checkpoint, train_on_mixture

        result = train_on_mixture(self.config, self.run, mixture, out_dir, recipe, role, show_progress=self.progress)
        if not result.skipped:
            self.trainings += 1
        import torch

        from demix.evaluation import resolve_device
        from demix.training.recipe import quiet_transformers

        with quiet_transformers():
            model = load_checkpoint(result.path, self.config.model.trust_remote_code, torch.float32)
        model.to(resolve_device(self.device)).eval()
        with torch.no_grad():
            ev = self._evaluate(model)
        del model
        prov = {
            "role": role,
            "model_dir": str(result.path),
            "recipe": want,
            "tokens_seen": result.provenance.get("tokens_seen"),
            "base_hash": result.provenance.get("base_hash"),
        }
        scored = self._save(mixture, kind, ev, prov, stale)
        scored.trained = not result.skipped
        self.on_event(kind, key, "trained" if not result.skipped else "evaluated")
        return scored

    def reference(self, mixture: Mapping[str, float]) -> Scored:
        """The reference model of ``mixture`` (reference recipe, ``models/references/<key>``)."""
        from demix.training import reference_recipe

        return self.trained_model(
            mixture, REFERENCE, self.run.reference(mixture_key(mixture)), reference_recipe(self.config), "reference"
        )

    def trained_proxy(self, mixture: Mapping[str, float], tokens: int) -> Scored:
        """The trained proxy of ``mixture`` at a ``tokens`` budget (``models/trained_proxies/<key>@<tokens>``)."""
        return self.trained_model(
            mixture,
            trained_kind(tokens),
            self.run.trained_proxy(f"{mixture_key(mixture)}@{int(tokens)}"),
            trained_recipe(self.config, tokens),
            "trained_proxy",
        )

    def merged(self, mixture: Mapping[str, float], builder: Any) -> Scored:
        """Build the merged proxy of ``mixture`` into ``builder.model`` (always: its weights are
        needed for the proxy gap) and score it, reusing a stored merged evaluation."""
        builder.build(mixture)
        key = mixture_key(mixture)
        stored, stale = self._stored(mixture, MERGED)
        if stored is not None:
            self.on_event(MERGED, key, "reused")
            return stored
        import torch

        with torch.no_grad():
            ev = self._evaluate(builder.model)
        scored = self._save(
            mixture, MERGED, ev, {"merge_method": self.config.merge.method, "round": None, "components": self.components},
            stale,
        )
        self.on_event(MERGED, key, "evaluated")
        return scored


def _recipe_fingerprint(recipe: TrainRecipe) -> dict[str, Any]:
    """What makes two trainings on the same mixture the same model (stored with every row)."""
    return {k: v for k, v in recipe.model_dump(mode="json").items() if k != "save_every_steps"}


# --------------------------------------------------------------------------- targets


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


def fidelity_scores(
    scored: Mapping[str, Scored], ratio_caps: set[str], directions: Mapping[str, bool], order: Sequence[str] = ()
) -> tuple[dict[str, dict[str, float]], list[Target]]:
    """Target scores per mixture id and the targets: every capability (in the macro averages;
    those in ``ratio_caps`` as ``2 ** score``) and every benchmark (raw values, their direction),
    in ``order`` (capability and benchmark names of the config)."""
    out: dict[str, dict[str, float]] = {}
    for key, s in scored.items():
        row = {c: (2.0 ** v if c in ratio_caps else v) for c, v in s.capabilities.items()}
        for b, v in s.benchmarks.items():
            row[f"benchmark:{b}"] = v
        out[key] = row
    # Targets in the config's order (stored rows come back with sorted keys), so reports and
    # their macro averages never depend on where the scores came from.
    first = next(iter(scored.values()))
    targets = [Target(c, capability=True, higher_is_better=True, ratio_scale=True if c in ratio_caps else None)
               for c in _ordered(first.capabilities, order)]
    targets += [Target(f"benchmark:{b}", higher_is_better=bool(directions.get(b, True)))
                for b in _ordered(first.benchmarks, order)]
    return out, targets


def _ordered(names: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


# --------------------------------------------------------------------------- the stage


@dataclass
class FidelityResult:
    """What the fidelity stage measured; the same content is in ``<run>/fidelity/``."""

    mixtures: list[ReferenceMixture]
    reports: dict[str, FidelityReport]
    """Proxy kind (``merged``, ``trained@<tokens>``) -> its fidelity against the reference models."""
    scores: dict[str, dict[str, dict[str, Any]]]
    """Mixture key -> kind (reference, merged, trained@<tokens>) -> {benchmarks, capabilities}."""
    compute: dict[str, Any]
    """The content of ``compute.json``."""
    audit: Any
    """The :class:`demix.fidelity.audit.AuditReport` (component deltas, cosines, proxy gaps)."""
    summary: list[dict[str, Any]]
    """One row per proxy kind: macro statistics and the compute of a search (for rho vs compute)."""
    trained_now: int = 0
    evaluated_now: int = 0
    directory: Path | None = None
    notes: list[str] = field(default_factory=list)
    baselines: dict[str, FidelityReport] = field(default_factory=dict)
    """No-model baselines (``own_weight``: see :func:`own_weight_baseline`), absent when they do not apply."""
    differences: dict[str, Statistic] = field(default_factory=dict)
    """Trained proxy kind -> macro rho of merged proxies minus its own, with a paired bootstrap
    interval (:func:`demix.fidelity.metrics.paired_difference`): merged is ahead where it lies above 0."""


def run_fidelity(
    config: RunConfig,
    run: RunDir,
    progress: bool = True,
    *,
    device: str | None = None,
    store: Any = None,
    on_event: Callable[[str, str, str], None] | None = None,
) -> FidelityResult:
    """Run (or resume) the fidelity stage and write ``<run>/fidelity/``.

    Needs prepared data, a trained base and trained components. ``device`` defaults to
    ``evaluation.device`` (evaluation and merging; training uses ``train.device``).
    ``on_event(kind, mixture_key, action)`` is called after each model is trained, evaluated or reused.
    """
    from demix.fidelity.audit import AuditThresholds, audit_components, proxy_gap
    from demix.merging import ProxyBuilder
    from demix.merging.builder import run_checkpoints
    from demix.search import read_token_counts
    from demix.training import is_finished

    domains = config.data.domain_names
    token_counts = read_token_counts(run, domains)
    base, comps = run_checkpoints(config, run)  # fail before any training when components are missing
    unfinished = [d for d, p in comps.items() if d not in config.train.components.paths and not is_finished(p)]
    if unfinished:
        raise DemixError(f"the components of {unfinished} are not finished", "run `demix train components CONFIG` first")
    mixtures = reference_mixtures(config, token_counts)
    budgets = trained_budgets(config)
    out_dir = run.fidelity
    write_json(out_dir / "mixtures.json", {
        "version": FORMAT_VERSION,
        "mixtures": [{"key": m.key, "source": m.source, "weights": m.weights} for m in mixtures],
        "trained_proxy_budgets": budgets,
    })

    scorer = ModelScorer(config, run, store=store, device=device, progress=progress, on_event=on_event)
    scored: dict[str, dict[str, Scored]] = {REFERENCE: {}, MERGED: {}, **{trained_kind(b): {} for b in budgets}}
    try:
        # References first, then trained proxies, then the resident merge (base + K components in
        # memory) so that training never shares memory with the builder.
        for m in mixtures:
            scored[REFERENCE][m.key] = scorer.reference(m.weights)
        for b in budgets:
            for m in mixtures:
                scored[trained_kind(b)][m.key] = scorer.trained_proxy(m.weights, b)

        thresholds = AuditThresholds.from_config(config.fidelity)
        audit = audit_components(base, comps, thresholds=thresholds)
        from demix.training.recipe import quiet_transformers

        with quiet_transformers():
            builder = ProxyBuilder.from_run(config, run, device or config.evaluation.device)
        notes: list[str] = []
        for m in mixtures:
            merged = scorer.merged(m.weights, builder)
            scored[MERGED][m.key] = merged
            ref_dir = run.reference(m.key)
            if is_finished(ref_dir):
                audit.add_gap(proxy_gap(
                    base, builder.state_dict(), ref_dir, mixture_id=m.key, mixture=m.weights,
                    proxy_scores=merged.capabilities, reference_scores=scored[REFERENCE][m.key].capabilities,
                    thresholds=thresholds,
                ))
            else:
                notes.append(f"reference model of {m.key} is not on disk (scores from the store); no proxy gap")
        del builder
    finally:
        scorer.close()

    directions = _directions(scored, config)
    ratio_caps = ratio_scale_capabilities(config)
    order = _target_order(config)
    ref_scores, targets = fidelity_scores(scored[REFERENCE], ratio_caps, directions, order)
    f = config.fidelity
    reports: dict[str, FidelityReport] = {}
    for kind, rows in scored.items():
        if kind == REFERENCE:
            continue
        proxy_scores, _ = fidelity_scores(rows, ratio_caps, directions, order)
        reports[kind] = compare(
            ref_scores, proxy_scores, targets, proxy_kind=kind, bootstrap=f.bootstrap, seed=f.seed,
            confidence=f.confidence, top_fraction=f.top_fraction,
        )

    baselines = {}
    own = own_weight_baseline(config, {m.key: m.weights for m in mixtures}, ref_scores, targets)
    if own is not None:
        baselines[OWN_WEIGHT] = own
    differences = {k: paired_difference(reports[MERGED], r) for k, r in reports.items() if k != MERGED}
    compute = compute_accounting(config, run, base, comps, len(mixtures), budgets)
    summary = _summary(reports, compute, differences)
    result = FidelityResult(
        mixtures=mixtures,
        reports=reports,
        scores={
            m.key: {kind: {"benchmarks": rows[m.key].benchmarks, "capabilities": rows[m.key].capabilities}
                    for kind, rows in scored.items()}
            for m in mixtures
        },
        compute=compute,
        audit=audit,
        summary=summary,
        trained_now=scorer.trainings,
        evaluated_now=scorer.evaluations,
        directory=out_dir,
        notes=notes,
        baselines=baselines,
        differences=differences,
    )
    _write(result, config, ratio_caps, directions)
    return result


def own_domain_capabilities(config: RunConfig) -> dict[str, str]:
    """Capability -> domain, for capabilities made only of held-out benchmarks of one domain
    (the default capabilities: one per domain)."""
    from demix.evaluation import resolve_benchmarks, resolve_capabilities

    benchmarks = {b.name: b for b in resolve_benchmarks(config)}
    out = {}
    for cap in resolve_capabilities(config, list(benchmarks.values())):
        domains = {benchmarks[n].domain for n in cap.weights if benchmarks[n].evaluator == "heldout_loss"}
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


def _target_order(config: RunConfig) -> list[str]:
    from demix.evaluation import resolve_benchmarks, resolve_capabilities

    benchmarks = resolve_benchmarks(config)
    return [c.name for c in resolve_capabilities(config, benchmarks)] + [b.name for b in benchmarks]


def _directions(scored: Mapping[str, Mapping[str, Scored]], config: RunConfig) -> dict[str, bool]:
    """Benchmark directions: from the evaluations (fresh or stored), else from the config."""
    from demix.evaluation import resolve_benchmarks

    out: dict[str, bool] = {b.name: b.higher_is_better for b in resolve_benchmarks(config) if b.higher_is_better is not None}
    for rows in scored.values():
        for s in rows.values():
            out.update(s.higher_is_better)
    return out


def compute_accounting(
    config: RunConfig, run: RunDir, base: Path, comps: Mapping[str, Path], num_references: int, budgets: Sequence[int]
) -> dict[str, Any]:
    """Tokens and FLOPs of one search done by DeMix and by trained proxies at each budget, and of
    the reference models this stage trained (the content of ``compute.json``)."""
    from demix.fidelity.compute import (
        compare_budgets,
        count_parameters,
        demix_budget,
        heldout_eval_tokens,
        trained_budget,
    )
    from demix.training import is_finished, read_provenance, reference_recipe
    from demix.training.recipe import training_steps

    params = count_parameters(base)
    eval_tokens = heldout_eval_tokens(config)
    n = config.fidelity.search_proxies or sum(config.search.rounds)
    comp_tokens = {}
    for d, p in comps.items():
        tokens = read_provenance(p).get("tokens_seen") if is_finished(p) else None
        comp_tokens[d] = int(tokens) if tokens else int(config.train.components.tokens)

    def trained_tokens(recipe: TrainRecipe) -> int:
        # What training really consumes (training refuses a budget under one step).
        return max(1, training_steps(recipe, config.model.seq_len)) * recipe.batch_size * config.model.seq_len

    budgets_ = [demix_budget(params, comp_tokens, n, eval_tokens)]
    budgets_ += [
        trained_budget(params, trained_tokens(trained_recipe(config, b)), eval_tokens, num_models=n, approach=trained_kind(b))
        for b in budgets
    ]
    references = trained_budget(
        params, trained_tokens(reference_recipe(config)), eval_tokens, num_models=num_references, approach="reference models"
    )
    return {
        "version": FORMAT_VERSION,
        "params": {"total": params.total, "embedding": params.embedding, "head": params.head, "tied": params.tied,
                   "flop_params": params.flop_params},
        "search_proxies": n,
        "eval_tokens_per_model": eval_tokens,
        "note": "one search of search_proxies mixtures: DeMix trains the components once and evaluates a merged "
                "proxy per mixture; the baseline trains and evaluates a proxy per mixture. The base is shared and "
                "counted in neither; reference models are ground truth, counted apart.",
        "budgets": [b.to_dict() for b in budgets_],
        "references": references.to_dict(),
        "rows": compare_budgets(budgets_, reference="demix"),
    }


def _summary(
    reports: Mapping[str, FidelityReport], compute: Mapping[str, Any], differences: Mapping[str, Statistic]
) -> list[dict[str, Any]]:
    flops = {b["approach"]: b for b in compute["budgets"]}
    rows = []
    for kind, rep in reports.items():
        budget = flops["demix" if kind == MERGED else kind]
        row: dict[str, Any] = {"proxy_kind": kind, "flops": budget["flops"], "train_tokens": budget["train_tokens"],
                               "eval_tokens": budget["eval_tokens"], "n": len(rep.mixtures)}
        for stat, st in rep.macro.items():
            row[stat] = st.to_dict()
        if kind in differences:
            row["merged_minus_this"] = differences[kind].to_dict()
        row["per_capability"] = {
            name: {"spearman": t.spearman.to_dict(), "crr": t.crr.to_dict()}
            for name, t in rep.targets.items() if t.capability
        }
        rows.append(row)
    return rows


def _write(result: FidelityResult, config: RunConfig, ratio_caps: set[str], directions: Mapping[str, bool]) -> None:
    d = result.directory
    assert d is not None
    write_json(d / "scores.json", {
        "version": FORMAT_VERSION,
        "higher_is_better": dict(directions),
        "ratio_scale_capabilities": sorted(ratio_caps),
        "weights": {m.key: m.weights for m in result.mixtures},
        "scores": result.scores,
    })
    write_json(d / "compute.json", result.compute)
    result.audit.save(d / "audit.json")
    for kind, rep in result.reports.items():
        rep.save(d / f"{kind}.json")
    write_json(d / "fidelity.json", _nan_safe({
        "version": FORMAT_VERSION,
        "mixtures": [{"key": m.key, "source": m.source, "weights": m.weights} for m in result.mixtures],
        "proxy_kinds": list(result.reports),
        "reports": {k: r.to_dict() for k, r in result.reports.items()},
        "baselines": {k: r.to_dict() for k, r in result.baselines.items()},
        "summary": result.summary,
        "audit_warnings": [
            {"kind": w.kind, "severity": w.severity, "subject": w.subject, "group": w.group,
             "value": w.value, "threshold": w.threshold, "message": w.message}
            for w in result.audit.warnings()
        ],
        "notes": result.notes,
    }))


def _nan_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_safe(v) for v in obj]
    return obj


def _fidelity_json(path: str | Path) -> dict[str, Any]:
    import json

    p = Path(path)
    if p.is_dir():
        p = p / "fidelity.json"
    if not p.is_file():
        raise DemixError(f"no fidelity results at '{p}'", "run `demix fidelity CONFIG` first")
    return json.loads(p.read_text())


def load_reports(path: str | Path) -> dict[str, FidelityReport]:
    """The per-kind reports of a ``fidelity.json`` (``{proxy kind: FidelityReport}``)."""
    return {k: FidelityReport.from_dict(v) for k, v in _fidelity_json(path)["reports"].items()}


def load_baselines(path: str | Path) -> dict[str, FidelityReport]:
    """The no-model baselines of a ``fidelity.json`` (``{"own_weight": FidelityReport}`` or empty)."""
    return {k: FidelityReport.from_dict(v) for k, v in _fidelity_json(path).get("baselines", {}).items()}
