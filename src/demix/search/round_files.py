"""The files of one search round (``search/round_<r>/``) as typed records, each with one
writer and one reader; paths from :meth:`demix.rundir.RunDir.round_files`.

=================  ===================================================================
``planned.json``   :class:`RoundPlan`, written before the round's first evaluation
``cv.json``        :class:`CvReport`, out-of-fold quality of every predictor
``selection.json`` :class:`Selection`, the top-k mean and spread
``pool.npz``       :class:`CandidatePool`, the ranked pool as plain arrays (never pickled)
``pareto.csv``     :class:`ParetoFront`, the Pareto-optimal candidates across capabilities
=================  ===================================================================

Every mixture in these files is *component weights* (the merge coefficients of a proxy: what
the search samples, evaluates and ranks; ``planned.json`` and ``selection.json`` say so in their
``unit``); the data mixtures they stand for are in ``best_mixture.json`` (:mod:`demix.data_mixture`).

Layouts on disk are the ones demix always wrote, plus ``unit`` since demix 0.2 (files without
it read the same); a missing or garbled file is a DemixError naming it and the fix.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from demix.errors import DemixError
from demix.mixtures import mixture_key
from demix.rundir import atomic_write, atomic_write_text, write_json
from demix.search.files import RERUN, json_mixture, json_number, json_numbers, read_record

#: What the mixtures of a round's files are.
COMPONENT_WEIGHTS_UNIT = (
    "component weights: merge coefficients of the proxies (the data mixtures they stand for are in best_mixture.json)"
)


@dataclass
class RoundPlan:
    """``planned.json``: the component weights of one round's proxies, drawn from the seed
    before any evaluation, so a resumed search evaluates the same ones."""

    round: int
    size: int
    domains: list[str]
    mixtures: list[dict[str, float]]
    """Component weights, one mapping per proxy."""
    unit: str | None = COMPONENT_WEIGHTS_UNIT
    """None in files of demix < 0.2 (whose mixtures were component weights too)."""

    @property
    def keys(self) -> list[str]:
        return [mixture_key(m) for m in self.mixtures]

    def to_dict(self) -> dict[str, Any]:
        unit = {} if self.unit is None else {"unit": self.unit}
        return {"round": self.round, "size": self.size, "domains": self.domains, **unit, "mixtures": self.mixtures,
                "keys": self.keys}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundPlan:
        mixtures = [{str(k): float(v) for k, v in m.items()} for m in d["mixtures"]]
        return cls(json_number(d["round"], "round"), json_number(d["size"], "size"), [str(x) for x in d["domains"]], mixtures,
                   d.get("unit"))

    def write(self, path: str | Path) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> RoundPlan:
        fix = "delete it (the round is planned again)"
        return read_record(path, "round plan", "run `demix search` (it plans the round)", cls.from_dict, fix)


@dataclass
class TargetCv:
    """k-fold cross-validation of one predictor (:func:`demix.predictors.cross_validate`)."""

    spearman: float | None
    """None where undefined (constant scores or predictions)."""
    mae: float | None
    rmse: float | None
    n: int
    folds: int
    kind: str
    predictions: list[float] | None = None
    """Out-of-fold predictions in the order of the fitted rows (none when there are no folds)."""
    interval: dict[str, Any] | None = None
    """With ``search.predictor_intervals``: out-of-fold calibration of the bootstrap ensemble's
    intervals (:func:`demix.predictors.interval_report`: ``level``, ``coverage``, ``width``,
    ``rmse``, ``members``, ``n``); None without an ensemble."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"spearman": self.spearman, "mae": self.mae, "rmse": self.rmse, "n": self.n,
                               "folds": self.folds, "kind": self.kind}
        if self.interval is not None:
            out["interval"] = self.interval
        return out if self.predictions is None else {**out, "predictions": self.predictions}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TargetCv:
        interval = d.get("interval")
        return cls(d["spearman"], d["mae"], d["rmse"], d["n"], d["folds"], d["kind"], d.get("predictions"),
                   dict(interval) if isinstance(interval, Mapping) else None)


@dataclass
class CvReport:
    """``cv.json``: the CV report of every predictor fitted after a round."""

    n: int
    higher_is_better: dict[str, bool]
    capabilities: dict[str, TargetCv]
    benchmarks: dict[str, TargetCv]
    """Fitted on higher-is-better scores (lower-is-better benchmarks negated)."""

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "higher_is_better": self.higher_is_better,
                "capabilities": {k: c.to_dict() for k, c in self.capabilities.items()},
                "benchmarks": {k: c.to_dict() for k, c in self.benchmarks.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CvReport:
        return cls(d["n"], dict(d["higher_is_better"]), {k: TargetCv.from_dict(c) for k, c in d["capabilities"].items()},
                   {k: TargetCv.from_dict(c) for k, c in d["benchmarks"].items()})

    def write(self, path: str | Path) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> CvReport:
        return read_record(path, "CV report", "run `demix search` (it fits the round's predictors)", cls.from_dict)


@dataclass
class Selection:
    """``selection.json``: the top-k mean (component weights) after a round and what it was chosen from."""

    weights: dict[str, float]
    """The top-k mean of the pool's component weights."""
    spread: dict[str, dict[str, float]]
    top_k: int
    pool_size: int
    feasible: int
    """Candidates of the pool that satisfy the constraints."""
    pareto_size: int
    pareto_over: int
    """Best-ranked candidates the Pareto front was computed over."""
    evaluations: int
    settings: dict[str, str | None] | None = None
    """Fingerprints of what the round's fit and ranking were made with (``search``, ``scoring``,
    ``components``: :mod:`demix.search.settings`); None in files written before they were recorded.
    The round's files are final for these settings: a resumed search reads them back."""
    unit: str | None = None
    """:data:`COMPONENT_WEIGHTS_UNIT` (None in files of demix < 0.2)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None or k not in ("settings", "unit")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Selection:
        spread = {dom: json_numbers(s, f"spread.{dom}") for dom, s in d["spread"].items()}
        settings = d.get("settings")
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"settings is {settings!r}, not an object")
        return cls(json_mixture(d["weights"]), spread, d["top_k"], d["pool_size"], d["feasible"], d["pareto_size"],
                   d["pareto_over"], d["evaluations"], dict(settings) if settings is not None else None, d.get("unit"))

    def write(self, path: str | Path) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> Selection:
        return read_record(path, "selection", "run `demix search` (it ranks the round's pool)", cls.from_dict)


@dataclass
class CandidatePool:
    """``pool.npz``: a ranked candidate pool as plain arrays (nothing pickled)."""

    domains: list[str]
    capabilities: list[str]
    weights: np.ndarray
    """(n, K) candidates' component weights."""
    capability_scores: np.ndarray
    """(n, C) predicted capabilities, higher is better."""
    objective: np.ndarray
    """(n,) objective, -inf where a constraint fails."""
    top_k: np.ndarray
    """Indices of the top-k, best first."""
    objective_mean: np.ndarray | None = None
    """(n,) the bootstrap ensemble's mean objective (``search.predictor_intervals``; else None)."""
    objective_std: np.ndarray | None = None
    """(n,) the ensemble's spread of the objective (std across members), what ucb plans by."""

    def write(self, path: str | Path) -> None:
        """Write atomically (a kill or a full disk leaves the previous pool; the error names the file)."""
        spread: dict[str, Any] = {} if self.objective_mean is None or self.objective_std is None else {
            "objective_mean": self.objective_mean, "objective_std": self.objective_std}

        def write(tmp: Path) -> None:
            # A file object: np.savez would append ".npz" to a path that lacks it.
            with open(tmp, "wb") as fh:
                np.savez(fh, weights=self.weights, capability_scores=self.capability_scores, objective=self.objective,
                         top_k=self.top_k, domains=np.array(self.domains), capabilities=np.array(self.capabilities),
                         **spread)

        atomic_write(Path(path), write)

    @classmethod
    def read(cls, path: str | Path) -> CandidatePool:
        path = Path(path)
        if not path.is_file():
            raise DemixError(f"'{path}' does not exist", "run `demix search` (it ranks the round's pool)")
        try:
            with np.load(path, allow_pickle=False) as z:
                spread = (z["objective_mean"], z["objective_std"]) if "objective_std" in z.files else (None, None)
                return cls([str(d) for d in z["domains"]], [str(c) for c in z["capabilities"]], z["weights"],
                           z["capability_scores"], z["objective"], z["top_k"], *spread)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise DemixError(f"'{path}' is not a candidate pool ({exc})", RERUN) from None


@dataclass
class ParetoFront:
    """``pareto.csv``: the Pareto-optimal candidates across capabilities, one row each: their
    component weights (a column per domain), predicted capabilities (``pred_<capability>``)
    and objective."""

    domains: list[str]
    capabilities: list[str]
    weights: np.ndarray
    capability_scores: np.ndarray
    objective: np.ndarray

    def write(self, path: str | Path) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([*self.domains, *[f"pred_{c}" for c in self.capabilities], "objective"])
        for w, s, o in zip(self.weights, self.capability_scores, self.objective):
            writer.writerow([f"{x:.6f}" for x in w] + [f"{v:.6g}" for v in s] + [f"{o:.6f}"])
        atomic_write_text(Path(path), buf.getvalue())

    @classmethod
    def read(cls, path: str | Path) -> ParetoFront:
        path = Path(path)
        if not path.is_file():
            raise DemixError(f"'{path}' does not exist", "run `demix search` (it ranks the round's pool)")
        try:
            rows = list(csv.reader(io.StringIO(path.read_text())))
            head = rows[0]
            caps = [h[len("pred_"):] for h in head if h.startswith("pred_")]
            k = head.index(f"pred_{caps[0]}") if caps else len(head) - 1
            if head[-1] != "objective" or len(head) != k + len(caps) + 1:
                raise ValueError(f"unexpected header {head}")
            values = np.array([[float(x) for x in r] for r in rows[1:]], dtype=float).reshape(-1, len(head))
        except (OSError, UnicodeDecodeError, IndexError, ValueError) as exc:
            raise DemixError(f"'{path}' is not a Pareto front ({exc})", RERUN) from None
        return cls(head[:k], caps, values[:, :k], values[:, k:-1], values[:, -1])
