"""The merge-vs-data-mix check of the DeMix paper's Appendix D (`demix fidelity --calibrate`).

Does merging two components stand for training on the data they stand for? Two components
(``fidelity.calibrate.domains``, default the first two non-general domains) are merged at a few
ratios ``r`` (component weights ``{d1: r, d2: 1 - r}``, ``fidelity.calibrate.ratios``); each merged
proxy is compared with a **data-mixed model**: the base trained, with the components' recipe and
budget, on the data mixture the proxy stands for (``data(a) = r m_1 + (1 - r) m_2``, ``m_i`` the
components' training mixtures). This is done at each component budget of
``fidelity.calibrate.budgets`` (components and data-mixed models trained at that many tokens).

Per budget and capability:

- **consistency ratio** (the paper's): ``merged score / data-mixed score``, the mean over the
  ratios, on ratio-scale scores (``2 ** score`` for held-out bits per byte: the geometric-mean
  probability per byte; accuracies as they are). 1 means merging recovers what training on the
  mixed data gives; the paper reports 1.04 / 0.97 (math / code) at a relative delta of 3.1% and
  0.79 / 0.75 at 10.5%. Undefined on a capability whose scores are not ratio-scale.
- **gain ratio** (stricter, not in the paper): ``(merged - base) / (data-mixed - base)`` on the
  same scores, the mean over ratios: how much of the data-mixed model's change from the base
  the merge keeps (a ratio of near-equal scores can be near 1 while the gains differ).
- **rank rho**: Spearman rho of merged vs data-mixed scores over the ratios (does the merge
  order the ratios like training does; 5 points).
- **relative delta**: ``||component - base|| / ||base||`` over the whole model, the mean over the
  two components (:func:`demix.fidelity.audit.audit_components`), the x-axis of the paper's table.

Models live in ``<run>/fidelity/calibrate/``: ``components@<tokens>/<domain>/`` (not trained at
the run's own component budget when the run's components are finished: those are used) and
``mixed@<tokens>/<data mixture key>/``; finished ones are never retrained. Every model is
evaluated with the run's benchmarks (:class:`demix.evaluation.Evaluator`); the result is written
to ``<run>/fidelity/calibrate.json`` (:class:`Calibration`, read back with :meth:`Calibration.read`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from demix.config import RunConfig, TrainRecipe
from demix.errors import DemixError
from demix.fidelity._records import nan_to_none, none_to_nan, read_record
from demix.mixtures import mixture_key
from demix.rundir import RunDir, write_json

FORMAT_VERSION = 1

#: (what, budget, detail) after each model is trained or evaluated.
OnStep = Callable[[str, int, str], None]


def calibration_domains(config: RunConfig) -> list[str]:
    """The two domains whose components are merged; a DemixError when they are not two
    distinct non-general domains of the run."""
    domains = list(config.data.domain_names)
    general = config.data.general_domain
    chosen = list(config.fidelity.calibrate.domains) or [d for d in domains if d != general][:2]
    fix = "set fidelity.calibrate.domains to two of the run's non-general domains"
    if len(chosen) != 2 or len(set(chosen)) != 2:
        raise DemixError(f"the calibration merges two components, got {chosen}", fix)
    bad = [d for d in chosen if d not in domains or d == general]
    if bad:
        raise DemixError(f"fidelity.calibrate.domains names {bad}, not a non-general domain of {domains}", fix)
    return chosen


def calibration_budgets(config: RunConfig) -> list[int]:
    """Component budgets (tokens), ascending: ``fidelity.calibrate.budgets``, default a quarter
    of the components' budget and the budget itself."""
    tokens = config.train.components.tokens
    budgets = list(config.fidelity.calibrate.budgets) or [max(1, tokens // 4), tokens]
    return sorted(set(int(b) for b in budgets))


def component_recipe(config: RunConfig, tokens: int) -> TrainRecipe:
    """The components' training recipe at ``tokens`` (what both the calibration components and
    the data-mixed models are trained with)."""
    fields = config.train.components.model_dump(exclude={"general_share", "paths", "mixtures"})
    return TrainRecipe(**{**fields, "tokens": int(tokens)})


@dataclass
class CalibrationPoint:
    """One ratio at one budget: the merged proxy and the data-mixed model, scored."""

    budget: int
    ratio: float
    component_weights: dict[str, float]
    data_mixture: dict[str, float]
    merged: dict[str, float]
    """Capability -> ratio-scale score of the merged proxy (``2 ** score`` for held-out bits per byte)."""
    mixed: dict[str, float]
    """The same for the model trained on ``data_mixture``."""


@dataclass
class CalibrationRow:
    """One capability at one budget."""

    budget: int
    capability: str
    relative_delta: float
    """Mean over the two components of ||component - base|| / ||base|| (whole model)."""
    consistency_ratio: float
    """Mean over the ratios of merged / data-mixed score (NaN: not a ratio-scale capability)."""
    ratios: list[float]
    """merged / data-mixed per ratio, in ratio order."""
    gain_ratio: float
    """Mean over the ratios of (merged - base) / (data-mixed - base)."""
    rank_rho: float
    """Spearman rho of merged vs data-mixed scores over the ratios (NaN when either is constant)."""


@dataclass
class Calibration:
    """``calibrate.json``: the whole check."""

    domains: list[str]
    ratios: list[float]
    budgets: list[int]
    base: dict[str, float]
    """Capability -> ratio-scale score of the base."""
    relative_delta: dict[int, dict[str, float]]
    """Budget -> component domain -> whole-model relative delta."""
    points: list[CalibrationPoint]
    rows: list[CalibrationRow]
    ratio_scale: list[str] = field(default_factory=list)
    """Capabilities whose scores are ratio-scale (the others have no consistency ratio)."""

    def to_dict(self) -> dict[str, Any]:
        return nan_to_none({
            "version": FORMAT_VERSION, "domains": self.domains, "ratios": self.ratios, "budgets": self.budgets,
            "base": self.base, "relative_delta": {str(b): v for b, v in self.relative_delta.items()},
            "points": [asdict(p) for p in self.points], "rows": [asdict(r) for r in self.rows],
            "ratio_scale": self.ratio_scale,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise DemixError(f"calibrate.json has format version {data['version']}; this demix reads up to "
                             f"{FORMAT_VERSION}", "upgrade demix, or run `demix fidelity CONFIG --calibrate` again")
        rows = [CalibrationRow(**{**r, **{k: none_to_nan(r[k]) for k in ("relative_delta", "consistency_ratio",
                                                                          "gain_ratio", "rank_rho")},
                                  "ratios": [none_to_nan(x) for x in r["ratios"]]}) for r in data["rows"]]
        return cls(list(data["domains"]), [float(r) for r in data["ratios"]], [int(b) for b in data["budgets"]],
                   dict(data["base"]), {int(b): dict(v) for b, v in data["relative_delta"].items()},
                   [CalibrationPoint(**p) for p in data["points"]], rows, list(data.get("ratio_scale", [])))

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> Calibration:
        """The ``calibrate.json`` at ``path``; a DemixError naming it when missing or garbled."""
        return read_record(path, "a calibration file", cls.from_dict,
                           fix="run `demix fidelity CONFIG --calibrate` to write it")

    def row(self, budget: int, capability: str) -> CalibrationRow:
        """The row of one budget and capability."""
        for r in self.rows:
            if r.budget == budget and r.capability == capability:
                return r
        raise DemixError(f"calibrate.json has no row for budget {budget}, capability '{capability}'",
                         f"use one of the budgets {self.budgets}")

    def table(self) -> str:
        """Plain text: one line per budget and capability."""
        lines = [f"merge vs data mix: components of {self.domains[0]} and {self.domains[1]} merged at ratios "
                 f"{', '.join(f'{r:g}' for r in self.ratios)}",
                 f"{'budget':>9} {'capability':<18} {'rel. delta':>10} {'consistency':>11} {'gain ratio':>10} "
                 f"{'rank rho':>8}"]
        for r in self.rows:
            lines.append(f"{r.budget:>9,} {r.capability:<18} {r.relative_delta:>10.3f} {_num(r.consistency_ratio):>11} "
                         f"{_num(r.gain_ratio):>10} {_num(r.rank_rho):>8}")
        return "\n".join(lines)


def _num(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3f}"


def calibration_file(run: RunDir) -> Path:
    """``<run>/fidelity/calibrate.json``."""
    return run.fidelity / "calibrate.json"


def run_calibration(
    config: RunConfig, run: RunDir, *, device: str | None = None, progress: bool = True, on_step: OnStep | None = None
) -> Calibration:
    """Train what is missing, evaluate the base, every merged proxy and every data-mixed model,
    and write ``calibrate.json``. Needs prepared data and a trained base (and, to reuse them,
    the run's components)."""
    from demix.checkpoints import base_dir, component_dir, is_finished
    from demix.evaluation import Evaluator
    from demix.fidelity.audit import audit_components
    from demix.fidelity.targets import ratio_scale_capabilities
    from demix.training import train_on_mixture
    from demix.training.roles import mixture_map

    domains = calibration_domains(config)
    budgets = calibration_budgets(config)
    ratios = [float(r) for r in config.fidelity.calibrate.ratios]
    if len(ratios) < 2:
        raise DemixError("fidelity.calibrate.ratios needs at least two ratios", "use e.g. [0.1, 0.3, 0.5, 0.7, 0.9]")
    base = base_dir(config, run)
    if not is_finished(base) and not config.model.base_path:
        raise DemixError("the base is not trained", "run `demix train base CONFIG` first")
    step = on_step or (lambda what, budget, detail: None)
    mapping = mixture_map(config, run)
    training = mapping.training_mixtures()
    root = run.fidelity / "calibrate"
    evaluator = Evaluator.from_run(config, run, device)
    ratio_caps = ratio_scale_capabilities(config)

    def score(model: Any) -> dict[str, float]:
        import torch

        with torch.no_grad():
            caps = evaluator.evaluate(model).capabilities
        return {c: (2.0 ** v if c in ratio_caps else v) for c, v in caps.items()}

    base_scores = _score_checkpoint(config, base, score, device)
    step("base", 0, "evaluated")
    points: list[CalibrationPoint] = []
    deltas: dict[int, dict[str, float]] = {}
    for budget in budgets:
        recipe = component_recipe(config, budget)
        comps: dict[str, Path] = {}
        for d in domains:
            own = component_dir(config, run, d)
            if budget == config.train.components.tokens and is_finished(own):
                comps[d] = own
                continue
            # train_on_mixture trains reference models and trained proxies; a component is the same
            # training on its own mixture (its demix.json says role reference).
            out = root / f"components@{budget}" / d
            res = train_on_mixture(config, run, training[d], out, recipe, "reference", show_progress=progress)
            comps[d] = res.path
            step(f"component {d}", budget, "reused" if res.skipped else "trained")
        audit = audit_components(base, comps)
        deltas[budget] = {d: float(audit.deltas[d]["all"].relative) for d in domains}
        for r in ratios:
            a = {d: 0.0 for d in config.data.domain_names} | {domains[0]: r, domains[1]: 1.0 - r}
            data = mapping.data_of(a)
            out = root / f"mixed@{budget}" / mixture_key(data)
            res = train_on_mixture(config, run, data, out, recipe, "reference", show_progress=progress)
            step(f"data-mixed r={r:g}", budget, "reused" if res.skipped else "trained")
            points.append(CalibrationPoint(budget, r, {domains[0]: r, domains[1]: 1.0 - r}, data, {},
                                           _score_checkpoint(config, res.path, score, device)))
        _score_merged(config, base, comps, [p for p in points if p.budget == budget], score, device)
        step("merged proxies", budget, "evaluated")
    result = Calibration(domains, ratios, budgets, base_scores, deltas, points,
                         _rows(points, base_scores, deltas, budgets), sorted(_ratio_scale(points, base_scores)))
    result.write(calibration_file(run))
    return result


def _score_checkpoint(config: RunConfig, path: Path, score: Callable[[Any], dict[str, float]],
                      device: str | None) -> dict[str, float]:
    import torch

    from demix.checkpoints import resolve_device
    from demix.training import load_checkpoint, quiet_transformers

    with quiet_transformers():
        model = load_checkpoint(path, config.model.trust_remote_code, torch.float32)
    model.to(resolve_device(device or config.evaluation.device, "evaluation.device")).eval()
    out = score(model)
    del model
    return out


def _score_merged(config: RunConfig, base: Path, comps: Mapping[str, Path], points: Sequence[CalibrationPoint],
                  score: Callable[[Any], dict[str, float]], device: str | None) -> None:
    """Merged proxies of the two components at each point's component weights (one resident model)."""
    import torch

    from demix.checkpoints import resolve_device
    from demix.merging import ProxyBuilder
    from demix.merging.components import ComponentSet
    from demix.training import quiet_transformers

    dev = torch.device(resolve_device(device or config.evaluation.device, "evaluation.device"))
    with quiet_transformers():
        builder = ProxyBuilder(ComponentSet.load(base, dict(comps), device=dev), method=config.merge.method,
                               params=dict(config.merge.params), dtype=config.merge.dtype,
                               normalize=config.merge.normalize, trust_remote_code=config.model.trust_remote_code)
    for p in points:
        p.merged = score(builder.build(p.component_weights))
    del builder


def _ratio_scale(points: Sequence[CalibrationPoint], base: Mapping[str, float]) -> set[str]:
    """Capabilities whose every score is >= 0 (``2 ** score`` forms and accuracies are)."""
    caps = set(base)
    for p in points:
        caps &= {c for c in p.merged if p.merged[c] >= 0 and p.mixed[c] >= 0}
    return {c for c in caps if base[c] >= 0}


def _rows(points: Sequence[CalibrationPoint], base: Mapping[str, float], deltas: Mapping[int, Mapping[str, float]],
          budgets: Sequence[int]) -> list[CalibrationRow]:
    import numpy as np
    from scipy import stats

    ratio_caps = _ratio_scale(points, base)
    rows = []
    for budget in budgets:
        pts = sorted((p for p in points if p.budget == budget), key=lambda p: p.ratio)
        for cap in base:
            merged = np.array([p.merged[cap] for p in pts])
            mixed = np.array([p.mixed[cap] for p in pts])
            per = [float(m / x) if cap in ratio_caps and x > 0 else math.nan for m, x in zip(merged, mixed)]
            gains = [float((m - base[cap]) / (x - base[cap])) if x != base[cap] else math.nan for m, x in zip(merged, mixed)]
            rho = (float(stats.spearmanr(merged, mixed).statistic)
                   if len(pts) >= 3 and np.ptp(merged) > 0 and np.ptp(mixed) > 0 else math.nan)
            rows.append(CalibrationRow(
                budget=budget, capability=cap, relative_delta=float(np.mean(list(deltas[budget].values()))),
                consistency_ratio=float(np.mean(per)) if cap in ratio_caps else math.nan, ratios=per,
                gain_ratio=float(np.mean(gains)) if all(math.isfinite(g) for g in gains) else math.nan,
                rank_rho=rho,
            ))
    return rows
