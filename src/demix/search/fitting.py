"""Fitting: predictors from component weights (the merge coefficients each proxy was built
from, as the store keys it) to every capability and benchmark on the evaluations so far, with
the k-fold CV report of each."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from demix.config import RunConfig
from demix.errors import DemixError
from demix.mixtures import mixtures_to_rows
from demix.predictors import Predictors, cross_validate, fit_predictors, resolve_kind
from demix.rundir import RoundFiles, write_json
from demix.search.files import Prediction, Predictions
from demix.search.round_files import CvReport, TargetCv
from demix.store import Evaluation

#: ``kind`` of a ``predictors.json`` whose targets were fitted with different kinds.
PER_TARGET = "per_target"


@dataclass
class TargetPredictors:
    """Fitted predictors of a set of targets, each of the kind its own row count resolved to
    (``auto``: Ridge for a target fitted on fewer than
    :data:`~demix.predictors.AUTO_MIN_LIGHTGBM` rows, LightGBM from there on). The same
    interface as :class:`~demix.predictors.Predictors`, over one of those per kind."""

    parts: dict[str, Predictors]
    """Concrete kind -> the predictors of the targets fitted with it."""
    targets: list[str]
    domains: list[str]
    n: int
    """Evaluations the fit saw (a target may have been fitted on fewer: its CV report gives its n)."""

    @property
    def kinds(self) -> dict[str, str]:
        """Target -> the concrete kind of its predictor."""
        return {t: kind for kind, p in self.parts.items() for t in p.targets}

    @property
    def kind(self) -> str:
        """The one kind of every target, or the kinds joined by ``+`` where they differ
        (:attr:`kinds` gives each target's)."""
        return "+".join(sorted(self.parts)) or "none"

    def predict(self, weights: np.ndarray, targets: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Predicted scores (higher is better) for each row of ``weights`` (n, K)."""
        wanted = list(self.targets if targets is None else targets)
        unknown = [t for t in wanted if t not in self.targets]
        if unknown:
            raise DemixError(f"no predictor for {unknown}", f"known targets: {self.targets}")
        kinds = self.kinds
        out: dict[str, np.ndarray] = {}
        for kind, part in self.parts.items():
            mine = [t for t in wanted if kinds[t] == kind]
            if mine:
                out.update(part.predict(weights, mine))
        return {t: out[t] for t in wanted}

    def predict_matrix(self, weights: np.ndarray, targets: Sequence[str]) -> np.ndarray:
        """Predictions as an (n, len(targets)) array."""
        pred = self.predict(weights, targets)
        return np.stack([pred[t] for t in targets], axis=1) if targets else np.zeros((len(weights), 0))

    def save(self, directory: Path) -> None:
        """One kind: :meth:`Predictors.save` into ``directory`` (the one-kind layout, readable by ``Predictors.load``).
        Several: each kind's into ``directory/<kind>/``, and ``directory/predictors.json``
        naming each target's kind."""
        if len(self.parts) == 1:
            next(iter(self.parts.values())).save(directory)
            return
        for kind, part in self.parts.items():
            part.save(directory / kind)
        write_json(directory / "predictors.json", {"kind": PER_TARGET, "kinds": self.kinds, "domains": self.domains,
                                                   "targets": self.targets, "n": self.n})

    @classmethod
    def load(cls, directory: Path) -> TargetPredictors:
        """Read a fit written by :meth:`save` (or by :meth:`Predictors.save`)."""
        path = Path(directory) / "predictors.json"
        try:
            meta = json.loads(path.read_text())
            per_target = isinstance(meta, dict) and meta.get("kind") == PER_TARGET
            kinds = sorted(set(meta["kinds"].values())) if per_target else []
        except (OSError, KeyError, AttributeError, ValueError) as exc:
            raise DemixError(f"cannot read the predictor fit in '{directory}' ({exc})", "rerun `demix search` to refit") from None
        if not per_target:
            return cls.of(Predictors.load(Path(directory)))
        parts = {k: Predictors.load(Path(directory) / k) for k in kinds}
        return cls(parts, list(meta["targets"]), list(meta["domains"]), int(meta.get("n", 0)))

    @classmethod
    def of(cls, predictors: Predictors) -> TargetPredictors:
        """Predictors of one kind."""
        return cls({predictors.kind: predictors}, list(predictors.targets), list(predictors.domains), predictors.n)


@dataclass
class Fit:
    """Predictors fitted on the evaluations so far, with their CV reports."""

    capabilities: TargetPredictors
    benchmarks: TargetPredictors
    """Fitted on higher-is-better scores: lower-is-better benchmarks are negated."""
    cv: CvReport

    @property
    def n(self) -> int:
        """Evaluations the predictors were fitted on."""
        return self.cv.n

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return self.cv.higher_is_better

    def predict(self, w: np.ndarray) -> Predictions:
        """Predicted scores of the proxy of component weights ``w`` (K,) with each predictor's CV
        error (benchmarks in raw units)."""

        def one(value: float, cv: TargetCv, hib: bool | None = None) -> Prediction:
            return Prediction(value, cv.rmse, cv.mae, cv.spearman, cv.n, hib)

        caps = {c: one(float(v[0]), self.cv.capabilities[c]) for c, v in self.capabilities.predict(w[None, :]).items()}
        benches = {}
        for b, v in self.benchmarks.predict(w[None, :]).items():
            hib = self.higher_is_better[b]
            benches[b] = one(float((1.0 if hib else -1.0) * v[0]), self.cv.benchmarks[b], hib)
        return Predictions(caps, benches)

    def write(self, files: RoundFiles) -> None:
        """The round's ``predictors/`` and ``cv.json``."""
        self.capabilities.save(files.predictors / "capabilities")
        self.benchmarks.save(files.predictors / "benchmarks")
        self.cv.write(files.cv)

    @classmethod
    def read(cls, files: RoundFiles) -> Fit:
        """The fit a finished round wrote (:meth:`write`); a DemixError naming the file when unreadable."""
        return cls(TargetPredictors.load(files.predictors / "capabilities"),
                   TargetPredictors.load(files.predictors / "benchmarks"), CvReport.read(files.cv))


def _check_rows(evaluations: Sequence[Evaluation], domains: Sequence[str]) -> None:
    """Rows to fit on: at least one, and no non-zero weight on a domain this run lacks (a zero
    weight on a domain removed since is the same proxy without it: demix.search.evidence)."""
    if not evaluations:
        raise DemixError("no finished evaluations to fit predictors on", "evaluate at least a few mixtures")
    unknown = sorted({d for e in evaluations for d, w in e.weights.items() if d not in domains and round(float(w), 6) != 0})
    if unknown:
        raise DemixError(
            f"the store holds mixtures over domain(s) {unknown} that this run does not have",
            "use a new output_dir (or store.url) for a run with different domains",
        )


def training_data(
    evaluations: Sequence[Evaluation], domains: Sequence[str], higher_is_better: Mapping[str, bool]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Component weights (n, K), capability scores and sign-corrected benchmark scores (higher is better)."""
    _check_rows(evaluations, domains)
    cap_names, bench_names = sorted(evaluations[0].capabilities), sorted(evaluations[0].benchmarks)
    for e in evaluations:
        if sorted(e.capabilities) != cap_names or sorted(e.benchmarks) != bench_names:
            raise DemixError(
                f"stored evaluations disagree on the benchmarks/capabilities (row {e.id}: "
                f"{sorted(e.benchmarks)} / {sorted(e.capabilities)} vs {bench_names} / {cap_names})",
                "the evaluation config changed during the search: use a new output_dir",
            )
    X = mixtures_to_rows(domains, [e.weights for e in evaluations])
    caps = {c: np.array([e.capabilities[c] for e in evaluations]) for c in cap_names}
    benches = {
        b: np.array([e.benchmarks[b] for e in evaluations]) * (1.0 if higher_is_better[b] else -1.0) for b in bench_names
    }
    return X, caps, benches


def resolve_directions(
    evaluations: Sequence[Evaluation], config: RunConfig, explicit: Mapping[str, bool] | None = None
) -> dict[str, bool]:
    """higher_is_better per benchmark: explicit argument, then what the scorer reported (kept in
    each row's provenance), then ``evaluation.benchmarks`` in the config."""
    from demix.evaluation.benchmarks import resolve_benchmarks

    names = sorted({b for e in evaluations for b in e.benchmarks})
    from_config = {b.name: b.higher_is_better for b in resolve_benchmarks(config) if b.higher_is_better is not None}
    out: dict[str, bool] = {}
    for b in names:
        if explicit and b in explicit:
            out[b] = bool(explicit[b])
            continue
        stored = [e.provenance.get("higher_is_better", {}).get(b) for e in evaluations]
        stored = [s for s in stored if s is not None]
        if stored:
            out[b] = bool(stored[-1])
        elif b in from_config:
            out[b] = from_config[b]
        else:
            raise DemixError(
                f"the direction of benchmark '{b}' is unknown",
                "add it to evaluation.benchmarks with higher_is_better, or have the scorer's result carry .higher_is_better",
            )
    return out


def fit_all(
    evaluations: Sequence[Evaluation],
    domains: Sequence[str],
    higher_is_better: Mapping[str, bool],
    kind: str = "auto",
    folds: int = 5,
    seed: int = 0,
) -> Fit:
    """Fit capability and benchmark predictors on the evaluations, with their CV reports.

    Each predictor is fitted (and cross-validated) on the evaluations that have its target: a
    benchmark or capability added since older rows were scored (a domain added, with its
    held-out benchmark) is fitted on the rows scored with it; every other target on all rows.
    Each target's kind is resolved on its own row count (``auto``: Ridge on the few rows of a
    benchmark just added, LightGBM on the many of the others), the kind its CV report in
    ``cv.json`` and ``predictors.json`` record."""
    X, caps, benches = target_data(evaluations, domains, higher_is_better)

    def fit(targets: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> tuple[TargetPredictors, dict[str, TargetCv]]:
        groups: dict[tuple[int, ...], dict[str, np.ndarray]] = {}
        for t, (idx, y) in targets.items():
            groups.setdefault(tuple(int(i) for i in idx), {})[t] = y
        models: dict[str, dict[str, Any]] = {}
        cv: dict[str, TargetCv] = {}
        for group, ys in groups.items():
            rows = X[list(group)]
            concrete = resolve_kind(kind, len(group))
            # cross_validate resolves the kind on the same n, so cv.json names the fitted kind.
            cv.update({t: TargetCv.from_dict(r) for t, r in cross_validate(rows, ys, kind, folds, seed).items()})
            models.setdefault(concrete, {}).update(fit_predictors(rows, ys, concrete, domains, seed).models)
        parts = {k: Predictors(k, list(domains), [t for t in targets if t in m], m, n=X.shape[0])
                 for k, m in sorted(models.items())}
        return TargetPredictors(parts, list(targets), list(domains), X.shape[0]), cv

    cap_predictors, cap_cv = fit(caps)
    bench_predictors, bench_cv = fit(benches)
    cv = CvReport(n=X.shape[0], higher_is_better=dict(higher_is_better), capabilities=cap_cv, benchmarks=bench_cv)
    return Fit(cap_predictors, bench_predictors, cv)


#: Fewest evaluations a target added since older rows were scored is fitted on.
MIN_ROWS_PER_TARGET = 2


def target_data(
    evaluations: Sequence[Evaluation], domains: Sequence[str], higher_is_better: Mapping[str, bool]
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Component weights (n, K) and, per capability and per benchmark (sign-corrected: higher is
    better), the indices of the rows that have it with their scores. Rows that lack a target
    were scored before it was added (the search lets only such rows through,
    :meth:`~demix.search.settings.ScoringSettings.only_adds`)."""
    _check_rows(evaluations, domains)
    X = mixtures_to_rows(domains, [e.weights for e in evaluations])

    def per_target(attr: str, sign: Mapping[str, float]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        names = sorted({t for e in evaluations for t in getattr(e, attr)})
        out = {}
        for t in names:
            idx = np.array([i for i, e in enumerate(evaluations) if t in getattr(e, attr)], dtype=np.int64)
            if len(idx) < min(MIN_ROWS_PER_TARGET, len(evaluations)):
                raise DemixError(
                    f"only {len(idx)} of {len(evaluations)} evaluations have '{t}' (it was added since the others "
                    "were scored): too few to fit its predictor",
                    "evaluate a few more mixtures (a larger search round) so that it is scored on at least "
                    f"{MIN_ROWS_PER_TARGET}",
                )
            out[t] = (idx, np.array([getattr(evaluations[i], attr)[t] for i in idx], dtype=np.float64) * sign.get(t, 1.0))
        return out

    signs = {b: 1.0 if higher_is_better[b] else -1.0 for b in higher_is_better}
    return X, per_target("capabilities", {}), per_target("benchmarks", signs)
