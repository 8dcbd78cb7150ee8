"""The fidelity stage (`demix fidelity`): reference models, merged and trained proxies of the same
mixtures, and how well each kind of proxy ranks the mixtures like the reference models do.

For each reference mixture (``fidelity.mixtures`` plus ``fidelity.num_references`` component
weights sampled with the search's sampler and bounds, seeded by ``fidelity.seed``), a pair of
component weights ``a`` and the data mixture the reference is trained on (``fidelity.pairing``:
by default ``data(a)``, the data the merged proxy stands for; :mod:`demix.fidelity.references`):

1. a **reference model** is trained from the base on the data mixture with the reference recipe
   (``train.reference``, by default the components' recipe) into
   ``models/references/<data mixture key>/`` (or, registered in ``fidelity.references``, taken
   from where it is and never trained) and evaluated on the run's benchmarks; the scores go
   into the store as proxy kind ``reference``, keyed by that data mixture (a reference trained on
   the same data is reused whichever component weights led to it);
2. a **trained proxy** (the RegMix-style baseline) per budget in
   ``fidelity.trained_proxy_budgets`` (default ``train.trained_proxy.tokens``) is trained on the
   same data mixture with the ``train.trained_proxy`` recipe at that budget into
   ``models/trained_proxies/<data mixture key>@<tokens>/`` and stored as ``trained@<tokens>``;
3. the **merged proxy** of ``a`` is built in memory and evaluated (stored as ``merged``, keyed by
   its component weights; an evaluation the search already stored for the same component
   weights is reused, after the same check of the settings it was scored with as the search's:
   :mod:`demix.search.settings`), and its weights are compared with the reference model's
   (:func:`demix.fidelity.audit.proxy_gap`).

Nothing is trained or evaluated twice (:class:`demix.fidelity.models.EvaluatedModels`): a
mixture with a stored row is reused, and a finished model directory is never retrained. Then
:func:`demix.fidelity.metrics.compare` per proxy kind on the targets of
:mod:`demix.fidelity.targets`, compute accounting (:mod:`demix.fidelity.compute`) and the
merge-validity audit (:mod:`demix.fidelity.audit`). The files written into ``<run>/fidelity/``
and their readers are in :mod:`demix.fidelity.files` (docs/fidelity.md, "Files").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demix.checkpoints import components_to_train, is_finished
from demix.config import RunConfig
from demix.errors import DemixError
from demix.fidelity.audit_report import AuditReport
from demix.fidelity.compute import approach_of, compute_accounting
from demix.fidelity.files import (
    FidelityResults,
    FidelityScores,
    Scores,
    SummaryRow,
    write_compute,
    write_mixtures,
)
from demix.fidelity.metrics import FidelityReport, compare, paired_difference
from demix.fidelity.models import EvaluatedModels, ModelScores, OnEvent
from demix.fidelity.references import DATA_MIXTURE, ReferenceMixture, reference_mixtures, trained_budgets
from demix.fidelity.statistics import Statistic
from demix.fidelity.targets import (
    LINEAR_RULE,
    OWN,
    OWN_WEIGHT,
    benchmark_directions,
    fidelity_scores,
    linear_rule_baseline,
    own_weight_baseline,
    ratio_scale_capabilities,
    target_groups,
    target_order,
)
from demix.fidelity.transfer import TransferPass, check_transfer, merged_identity
from demix.proxy_kind import MERGED, REFERENCE, trained, trained_tokens
from demix.rundir import FidelityFiles, RunDir, read_token_counts

#: Proxy kind -> mixture key -> the scores of that model.
Scored = dict[str, dict[str, ModelScores]]


@dataclass
class FidelityResult:
    """What the fidelity stage measured; the same content is in ``<run>/fidelity/``."""

    mixtures: list[ReferenceMixture]
    reports: dict[str, FidelityReport]
    """Proxy kind (``merged``, ``trained@<tokens>``) -> its fidelity against the reference models."""
    scores: dict[str, dict[str, Scores]]
    """Mixture key -> kind (reference, merged, trained@<tokens>) -> its benchmark and capability scores."""
    compute: dict[str, Any]
    """The content of ``compute.json`` (:func:`demix.fidelity.compute.compute_accounting`)."""
    audit: AuditReport
    """Component deltas, cosines and proxy gaps (``audit.json``)."""
    summary: list[SummaryRow]
    """One row per proxy kind: macro statistics and the compute of a search (for rho vs compute)."""
    trained_now: int = 0
    evaluated_now: int = 0
    directory: Path | None = None
    notes: list[str] = field(default_factory=list)
    baselines: dict[str, FidelityReport] = field(default_factory=dict)
    """No-model baselines (``own_weight``: see :func:`demix.fidelity.targets.own_weight_baseline`), absent
    when they do not apply."""
    differences: dict[str, Statistic] = field(default_factory=dict)
    """Trained proxy kind -> macro rho of merged proxies minus its own, with a paired bootstrap
    interval (:func:`demix.fidelity.metrics.paired_difference`): merged is ahead where it lies above 0."""
    groups: dict[str, list[str]] = field(default_factory=dict)
    """Target group (``own``, ``transfer``: :func:`demix.fidelity.targets.target_groups`) -> its capabilities."""
    group_differences: dict[str, dict[str, Statistic]] = field(default_factory=dict)
    """Trained proxy kind or baseline -> group -> macro rho of merged proxies minus its own over the
    group's capabilities, paired bootstrap interval."""
    rules: dict[str, str] = field(default_factory=dict)
    """Target -> the single linear rule the ``linear_rule`` baseline chose most often."""

    pairing: str = DATA_MIXTURE
    """``fidelity.pairing``: what the reference models were trained on (:mod:`demix.fidelity.references`)."""
    mapping: dict[str, Any] = field(default_factory=dict)
    """The run's map from component weights to data mixtures (:meth:`demix.data_mixture.MixtureMap.to_dict`)."""

    def results(self) -> FidelityResults:
        """The content of ``fidelity.json``."""
        return FidelityResults(self.mixtures, self.reports, self.baselines, self.summary, self.audit.warnings(),
                               self.notes, pairing=self.pairing, mapping=self.mapping, groups=self.groups,
                               rules=self.rules)


def run_fidelity(
    config: RunConfig,
    run: RunDir,
    progress: bool = True,
    *,
    device: str | None = None,
    store: Any = None,
    on_event: OnEvent | None = None,
) -> FidelityResult:
    """Run (or resume) the fidelity stage and write ``<run>/fidelity/``.

    Needs prepared data, a trained base and trained components. ``device`` defaults to
    ``evaluation.device`` (evaluation and merging; training uses ``train.device``).
    ``on_event(kind, mixture_key, action)`` is called after each model is trained, evaluated or reused.
    """
    from demix.training.roles import mixture_map

    base, comps = _finished_checkpoints(config, run)  # before any training
    check_transfer(config)
    mapping = mixture_map(config, run)
    mixtures = reference_mixtures(config, read_token_counts(run, config.data.domain_names), mapping)
    budgets = trained_budgets(config)
    files = run.fidelity_files
    write_mixtures(files.mixtures, mixtures, budgets, config.fidelity.pairing, mapping.to_dict())

    with EvaluatedModels(config, run, store=store, device=device, progress=progress, on_event=on_event) as models:
        models.check_search_rows([m.component_weights for m in mixtures])  # before any training
        scored = _trained_scores(models, mixtures, budgets)
        transfer = TransferPass(config, run, device) if config.fidelity.transfer else None
        if transfer is not None:  # before the resident merge is loaded: one model in memory at a time
            _transfer_of_trained(run, transfer, mixtures, scored)
        audit, notes = _merged_scores(config, run, models, mixtures, scored, base, comps, device, transfer)

    ratio_caps = ratio_scale_capabilities(config)
    directions = benchmark_directions(scored, config)
    reports, baselines, groups, rules = _compare(config, mixtures, scored, ratio_caps, directions)
    differences = {k: paired_difference(reports[MERGED], r) for k, r in reports.items() if k != MERGED}
    group_differences = {
        k: {g: paired_difference(reports[MERGED], r, over=names) for g, names in groups.items()
            if g in r.group_macro}
        for k, r in {**{k: r for k, r in reports.items() if k != MERGED}, **baselines}.items()
    }
    # Registered reference models were trained elsewhere: only the ones trained here are counted.
    compute = compute_accounting(config, run, base, comps, sum(m.model_path is None for m in mixtures), budgets)
    spent = {b["approach"]: b for b in compute["budgets"]}
    result = FidelityResult(
        mixtures=mixtures,
        reports=reports,
        scores={m.key: {kind: Scores(rows[m.key].benchmarks, rows[m.key].capabilities) for kind, rows in scored.items()}
                for m in mixtures},
        compute=compute,
        audit=audit,
        summary=[SummaryRow.of(kind, rep, spent[approach_of(kind)], differences.get(kind), group_differences.get(kind))
                 for kind, rep in reports.items()],
        trained_now=models.trainings,
        evaluated_now=models.evaluations,
        directory=files.root,
        notes=notes,
        baselines=baselines,
        differences=differences,
        pairing=config.fidelity.pairing,
        mapping=mapping.to_dict(),
        groups=groups,
        group_differences=group_differences,
        rules=rules,
    )
    scores = FidelityScores(dict(directions), sorted(ratio_caps), {m.key: m.component_weights for m in mixtures},
                            {m.key: m.data_mixture for m in mixtures}, result.scores)
    _write(result, scores, files)
    return result


def _finished_checkpoints(config: RunConfig, run: RunDir) -> tuple[Path, dict[str, Path]]:
    """The base and component directories; a DemixError when one is missing or unfinished."""
    from demix.merging.builder import run_checkpoints

    base, comps = run_checkpoints(config, run)
    unfinished = [d for d in components_to_train(config) if not is_finished(comps[d])]
    if unfinished:
        raise DemixError(f"the components of {unfinished} are not finished", "run `demix train components CONFIG` first")
    return base, comps


def _trained_scores(models: EvaluatedModels, mixtures: Sequence[ReferenceMixture], budgets: Sequence[int]) -> Scored:
    """Reference models and trained proxies of every mixture (trained, evaluated or reused), all
    trained on its data mixture; kept under the mixture's key (its component weights') for the reports."""
    scored: Scored = {REFERENCE: {}, MERGED: {}, **{trained(b): {} for b in budgets}}
    for m in mixtures:
        if m.model_path is not None:  # registered (fidelity.references): evaluated, never trained
            scored[REFERENCE][m.key] = models.registered_reference(m.data_mixture, Path(m.model_path))
        else:
            scored[REFERENCE][m.key] = models.reference(m.data_mixture)
    for b in budgets:
        for m in mixtures:
            scored[trained(b)][m.key] = models.trained_proxy(m.data_mixture, b)
    return scored


def _merged_scores(
    config: RunConfig,
    run: RunDir,
    models: EvaluatedModels,
    mixtures: Sequence[ReferenceMixture],
    scored: Scored,
    base: Path,
    comps: Mapping[str, Path],
    device: str | None,
    transfer: TransferPass | None = None,
) -> tuple[AuditReport, list[str]]:
    """Audit the components, then score the merged proxy of every mixture into ``scored`` and
    measure its gap to the reference model. Runs after all training, so that training never
    shares memory with the resident merge (base + K components)."""
    from demix.fidelity.audit import AuditThresholds, audit_components, proxy_gap
    from demix.merging import ProxyBuilder
    from demix.training import quiet_transformers

    thresholds = AuditThresholds.from_config(config.fidelity)
    audit = audit_components(base, comps, thresholds=thresholds)
    with quiet_transformers():
        builder = ProxyBuilder.from_run(config, run, device or config.evaluation.device)
    notes: list[str] = []
    for m in mixtures:
        merged = scored[MERGED][m.key] = models.merged(m.component_weights, builder)
        if transfer is not None:
            transfer.resident(MERGED, m.key, merged_identity(models.components, config, m.key), builder.model, merged)
        ref_dir = Path(m.model_path) if m.model_path is not None else run.reference(m.data_key)
        if m.model_path is not None or is_finished(ref_dir):
            audit.add_gap(proxy_gap(
                base, builder.state_dict(), ref_dir, mixture_id=m.key, mixture=m.component_weights,
                proxy_scores=merged.capabilities, reference_scores=scored[REFERENCE][m.key].capabilities,
                thresholds=thresholds,
            ))
        else:
            notes.append(f"reference model of {m.key} (data mixture {m.data_key}) is not on disk (scores from the "
                         "store); no proxy gap")
    return audit, notes


def _compare(
    config: RunConfig,
    mixtures: Sequence[ReferenceMixture],
    scored: Scored,
    ratio_caps: set[str],
    directions: Mapping[str, bool],
) -> tuple[dict[str, FidelityReport], dict[str, FidelityReport], dict[str, list[str]], dict[str, str]]:
    """(report per proxy kind, no-model baselines, target groups, the linear rules chosen):
    each kind's scores against the reference models'."""
    order = target_order(config)
    ref_scores, targets = fidelity_scores(scored[REFERENCE], ratio_caps, directions, order)
    groups = target_groups(config, [t.name for t in targets if t.capability])
    f = config.fidelity
    reports: dict[str, FidelityReport] = {}
    for kind, rows in scored.items():
        if kind == REFERENCE:
            continue
        proxy_scores, _ = fidelity_scores(rows, ratio_caps, directions, order)
        reports[kind] = compare(
            ref_scores, proxy_scores, targets, proxy_kind=kind, bootstrap=f.bootstrap, seed=f.seed,
            confidence=f.confidence, top_fraction=f.top_fraction, groups=groups,
        )
    baselines: dict[str, FidelityReport] = {}
    # Ranked by each domain's share of the data the reference was trained on (under the
    # component_weights pairing that is the component weight itself).
    data = {m.key: m.data_mixture for m in mixtures}
    own = own_weight_baseline(config, data, ref_scores, targets, {OWN: groups[OWN]} if OWN in groups else None)
    if own is not None:
        baselines[OWN_WEIGHT] = own
    rule, rules = linear_rule_baseline(config, data, ref_scores, targets, groups)
    if rule is not None:
        baselines[LINEAR_RULE] = rule
    return reports, baselines, groups, rules


def _transfer_of_trained(run: RunDir, transfer: TransferPass, mixtures: Sequence[ReferenceMixture], scored: Scored) -> None:
    """Transfer targets of every reference model and trained proxy (kept in ``scored``)."""
    for kind, rows in scored.items():
        if kind == MERGED:
            continue
        for m in mixtures:
            if kind == REFERENCE:
                path = Path(m.model_path) if m.model_path is not None else run.reference(m.data_key)
            else:
                path = run.trained_proxy(f"{m.data_key}@{trained_tokens(kind)}")
            if not (is_finished(path) or (kind == REFERENCE and m.model_path is not None)):
                raise DemixError(f"the {kind} model of data mixture {m.data_key} is not on disk ('{path}'), so its "
                                 "transfer targets (fidelity.transfer) cannot be scored",
                                 "restore the model directory, or leave fidelity.transfer empty")
            transfer.checkpoint(kind, m.data_key, path, rows[m.key])


def _write(result: FidelityResult, scores: FidelityScores, files: FidelityFiles) -> None:
    scores.write(files.scores)
    write_compute(files.compute, result.compute)
    result.audit.save(files.audit)
    for kind, rep in result.reports.items():
        rep.save(files.report(kind))
    result.results().write(files.results)
