"""``best_mixture.json`` as a typed record (:class:`BestMixture`), with its one writer and
reader, and the reading rules every search file follows (:mod:`demix.search.round_files` holds
the files of each round).

The path comes from :attr:`demix.rundir.RunDir.best_mixture`. The layout on disk is the one
demix always wrote: ``BestMixture.read(path).to_dict()`` gives back the JSON that was read. A
missing or garbled file, or a weight that is not a number, is a DemixError naming the file and
the fix.

Why one module of ~490 lines: ``best_mixture.json`` is one file, and every record in it
(predictions, baselines, top-k, intervals, the measured choice) is read and written by
:class:`BestMixture`; split, a reader would chase one file's layout across modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from demix.errors import DemixError
from demix.rundir import read_run_file, write_json

T = TypeVar("T")

DATA_MIXTURE_UNIT = (
    "data_mixture: token shares of the training data (fraction of training tokens drawn from each domain); "
    "component_weights: merge coefficients of the proxies"
)
#: The fix of a garbled search file: the search writes it again.
RERUN = "rerun `demix search` on the run directory (it writes the search's files again)"


def read_record(path: str | Path, what: str, missing_fix: str, build: Callable[[Any], T], fix: str = RERUN) -> T:
    """Parse a JSON run file with ``build``; every failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise DemixError(f"'{path}' does not exist", missing_fix)
    data = read_run_file(path, fix)
    try:
        if not isinstance(data, dict):
            raise TypeError(f"it holds a JSON {type(data).__name__}, not an object")
        return build(data)
    except KeyError as exc:
        raise DemixError(f"'{path}' is not a {what} (no key {exc})", fix) from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise DemixError(f"'{path}' is not a {what} ({exc})", fix) from None


def json_number(x: Any, what: str) -> Any:
    """``x`` unchanged when it is a JSON number (so a round trip writes it back as it was)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{what} is {x!r}, not a number")
    return x


def json_numbers(data: Any, what: str, optional: bool = False) -> dict[str, Any]:
    """A ``{name: number}`` mapping (None values allowed when ``optional``)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{what} is not a mapping")
    return {str(k): v if (optional and v is None) else json_number(v, f"{what} '{k}'") for k, v in data.items()}


def json_mixture(data: Any, what: str = "weight") -> dict[str, float]:
    weights = json_numbers(data, what)
    if not weights:
        raise ValueError("the weights are empty")
    bad = {d: w for d, w in weights.items() if not math.isfinite(w)}
    if bad:
        raise ValueError(f"{what}s {bad} are not finite numbers")
    return weights


# --------------------------------------------------------------------------- best_mixture.json


@dataclass
class Prediction:
    """A predicted score of the chosen (or a baseline) mixture with its predictor's CV error."""

    value: float
    """Capabilities: higher is better. Benchmarks: in their raw unit (see higher_is_better)."""
    cv_rmse: float | None = None
    cv_mae: float | None = None
    cv_spearman: float | None = None
    """None where undefined (constant scores or predictions)."""
    cv_n: int | None = None
    """Evaluations behind the CV statistics."""
    higher_is_better: bool | None = None
    """Benchmarks only."""

    def to_dict(self) -> dict[str, Any]:
        direction = {} if self.higher_is_better is None else {"higher_is_better": self.higher_is_better}
        return {"value": self.value, **direction, "cv_rmse": self.cv_rmse, "cv_mae": self.cv_mae,
                "cv_spearman": self.cv_spearman, "cv_n": self.cv_n}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prediction:
        return cls(json_number(d["value"], "a predicted value"), d.get("cv_rmse"), d.get("cv_mae"), d.get("cv_spearman"),
                   d.get("cv_n"), d.get("higher_is_better"))


@dataclass
class Predictions:
    """Predicted capabilities and benchmarks of one mixture."""

    capabilities: dict[str, Prediction]
    benchmarks: dict[str, Prediction]

    def to_dict(self) -> dict[str, Any]:
        return {"capabilities": {k: p.to_dict() for k, p in self.capabilities.items()},
                "benchmarks": {k: p.to_dict() for k, p in self.benchmarks.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Predictions:
        return cls({k: Prediction.from_dict(p) for k, p in d["capabilities"].items()},
                   {k: Prediction.from_dict(p) for k, p in d.get("benchmarks", {}).items()})


@dataclass
class Baseline:
    """A baseline data mixture (natural: token-proportional; uniform), the component weights
    standing for it and their predicted scores. When the baseline is not reachable (the proxies
    stand for data mixtures with general >= the general share), the component weights are those
    of the nearest reachable data mixture, and ``data_mixture`` is that one."""

    component_weights: dict[str, float]
    predicted: Predictions
    data_mixture: dict[str, float] | None = None
    """The data mixture the component weights stand for (None in files of demix < 0.2)."""
    data_target: dict[str, float] | None = None
    """The baseline as defined, in token shares."""
    reachable: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"data_mixture": self.data_mixture, "component_weights": self.component_weights,
                "data_target": self.data_target, "reachable": self.reachable, "predicted": self.predicted.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Baseline:
        if "component_weights" not in d:  # demix < 0.2: "weights" were component weights
            return cls(json_mixture(d["weights"]), Predictions.from_dict(d["predicted"]))
        data = d.get("data_mixture")
        target = d.get("data_target")
        return cls(json_mixture(d["component_weights"]), Predictions.from_dict(d["predicted"]),
                   None if data is None else json_mixture(data), None if target is None else json_mixture(target),
                   d.get("reachable"))


@dataclass
class TopK:
    """The candidates the chosen mixture averages."""

    k: int
    pool_size: int
    spread: dict[str, dict[str, float]]
    """Per domain: std, min and max of the top-k weights."""

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "pool_size": self.pool_size, "spread": self.spread}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TopK:
        return cls(json_number(d["k"], "top_k.k"), json_number(d["pool_size"], "top_k.pool_size"),
                   {dom: json_numbers(s, f"top_k.spread.{dom}") for dom, s in d.get("spread", {}).items()})


@dataclass
class ObjectiveSpec:
    """The objective the pool was ranked by (``search.objective`` and friends)."""

    kind: str
    capability_weights: dict[str, float]
    constraints: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "capability_weights": self.capability_weights, "constraints": self.constraints}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObjectiveSpec:
        return cls(str(d["kind"]), dict(d.get("capability_weights") or {}), list(d.get("constraints") or []))


@dataclass
class PredictorSpec:
    """The predictors behind the predictions."""

    kind: str
    n: int
    cv_folds: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "cv_folds": self.cv_folds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PredictorSpec:
        return cls(str(d["kind"]), d["n"], d["cv_folds"])


@dataclass
class RoundSummary:
    """One round of the search: its plan size, the evaluations after it and its top-k mean."""

    round: int
    planned: int
    evaluations: int
    component_weights: dict[str, float]
    data_mixture: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "planned": self.planned, "evaluations": self.evaluations,
                "component_weights": self.component_weights, "data_mixture": self.data_mixture}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundSummary:
        data = d.get("data_mixture")
        weights = d["component_weights"] if "component_weights" in d else d["weights"]  # "weights": demix < 0.2
        return cls(d["round"], json_number(d["planned"], "rounds[].planned"), d["evaluations"], json_mixture(weights),
                   None if data is None else json_mixture(data))


@dataclass
class Interval:
    """The bootstrap ensemble's prediction of one score at the chosen mixture."""

    mean: float
    """The members' mean."""
    std: float
    """The members' spread (standard deviation)."""
    lower: float
    upper: float
    """The ``level`` interval of a measured score (:class:`demix.predictors.Ensemble`)."""

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "lower": self.lower, "upper": self.upper}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Interval:
        lo, hi = json_number(d["lower"], "an interval's lower end"), json_number(d["upper"], "an interval's upper end")
        if lo > hi:
            raise ValueError(f"an interval's lower end {lo} is above its upper end {hi}")
        return cls(json_number(d["mean"], "an interval's mean"), json_number(d["std"], "an interval's std"), lo, hi)


@dataclass
class ChosenIntervals:
    """``intervals``: the bootstrap ensemble (``search.predictor_intervals``) at the chosen
    component weights, fitted on the last round's evaluations as the rounds' ensembles are."""

    level: float
    """Nominal two-sided coverage (``search.interval_level``)."""
    members: int
    n: int
    """Evaluations the members were resampled from."""
    kind: str
    """Predictor kind of the members."""
    capabilities: dict[str, Interval]
    objective: Interval
    objective_kind: str
    objective_includes_noise: bool
    """True (``weighted``): the interval is of a measured objective (members' spread and the
    out-of-bag noise of the weighted sum). False (``rank_mean``, ranks within the pool): the
    members' spread alone, ``mean +- z x std``."""

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "members": self.members, "n": self.n, "kind": self.kind,
                "capabilities": {c: i.to_dict() for c, i in self.capabilities.items()},
                "objective": {"kind": self.objective_kind, **self.objective.to_dict(),
                              "includes_noise": self.objective_includes_noise}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChosenIntervals:
        level = json_number(d["level"], "intervals.level")
        if not 0 < level < 1:
            raise ValueError(f"intervals.level is {level}, not in (0, 1)")
        obj = d["objective"]
        return cls(level, json_number(d["members"], "intervals.members"), json_number(d["n"], "intervals.n"),
                   str(d["kind"]), {c: Interval.from_dict(i) for c, i in d["capabilities"].items()},
                   Interval.from_dict(obj), str(obj["kind"]), bool(obj["includes_noise"]))


@dataclass
class MeasuredChoice:
    """``measured``: the chosen mixture's merged proxy as evaluated and stored, beside what the
    predictors said of it (a gap is the predictor overfitting the proxies)."""

    mixture_key: str
    source: str
    """Why it was measured: ``search.measure_chosen``, ``search.refine`` (the refinement
    evaluated it) or ``store`` (the store held it already)."""
    capabilities: dict[str, float]
    benchmarks: dict[str, float]
    """Raw units, as stored."""
    objective: float
    """The objective of the measured capabilities (``rank_mean``: their percentile ranks among
    the last pool's predicted capabilities, as a candidate's objective is computed)."""
    predicted_objective: float
    """The single fit's objective at the chosen mixture (the same way)."""
    objective_kind: str
    inside_interval: dict[str, bool] | None = None
    """Per capability and ``objective``: the measured value lies in the predicted interval
    (None: no ensemble, search.predictor_intervals 0)."""

    def to_dict(self) -> dict[str, Any]:
        return {"mixture_key": self.mixture_key, "source": self.source, "capabilities": self.capabilities,
                "benchmarks": self.benchmarks, "objective_kind": self.objective_kind, "objective": self.objective,
                "predicted_objective": self.predicted_objective, "inside_interval": self.inside_interval}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MeasuredChoice:
        inside = d.get("inside_interval")
        return cls(str(d["mixture_key"]), str(d["source"]), json_numbers(d["capabilities"], "measured.capabilities"),
                   json_numbers(d.get("benchmarks") or {}, "measured.benchmarks"),
                   json_number(d["objective"], "measured.objective"),
                   json_number(d["predicted_objective"], "measured.predicted_objective"), str(d["objective_kind"]),
                   None if inside is None else {str(k): bool(v) for k, v in inside.items()})


@dataclass
class BestMixture:
    """``best_mixture.json``: the chosen mixture and what it rests on.

    Two mixtures, never blurred (glossary): ``data_mixture``, the token shares of the training
    data the winning proxies stand for (what a user trains on; ``tokens`` and ``epochs`` are
    computed from it; exporters write it), and ``component_weights``, the merge coefficients the
    search ranked and the predictors were fitted on. ``mapping`` records how one gives the other
    (each component's training mixture) and the reachable region.

    A search fills every field. A hand-written file needs only ``data_mixture`` (or
    ``component_weights``). A file of demix < 0.2 holds ``weights``, which were component weights
    labelled as token shares: it is read with ``legacy`` set, its ``weights`` as the component
    weights, and :meth:`mixture` refuses to call them a data mixture."""

    component_weights: dict[str, float] | None = None
    data_mixture: dict[str, float] | None = None
    unit: str | None = None
    mapping: dict[str, Any] | None = None
    """:meth:`demix.data_mixture.MixtureMap.to_dict`: formula, region, each component's training mixture."""
    target_tokens: int | None = None
    domain_tokens: dict[str, int] | None = None
    tokens: dict[str, int] | None = None
    """Training tokens per domain at ``target_tokens``: data mixture x target."""
    epochs: dict[str, float | None] | None = None
    """Passes over each domain's data at ``target_tokens`` (None for a domain without tokens)."""
    domain_documents: dict[str, int] | None = None
    mean_document_tokens: dict[str, float] | None = None
    predicted: Predictions | None = None
    top_k: TopK | None = None
    baselines: dict[str, Baseline] = field(default_factory=dict)
    """Baseline mixtures by name: uniform and, with token counts, natural."""
    objective: ObjectiveSpec | None = None
    predictor: PredictorSpec | None = None
    rounds: list[RoundSummary] = field(default_factory=list)
    mixture_key: str | None = None
    """``mixture_key`` of the component weights (the store's key of their proxy)."""
    components: str | None = None
    """Fingerprint of the base and components the proxies were merged from (None: none on disk)."""
    settings: str | None = None
    """Fingerprint of the evaluation and merge settings the proxies were scored with
    (:class:`demix.search.settings.ScoringSettings`; None in files written before it was recorded)."""
    refinement: dict[str, Any] | None = None
    """``search.refine``'s record (:func:`demix.search.refine.run_refinement`): the measured start,
    every evaluated step, which mixture was chosen and the measured gain (None: not refined)."""
    sensitivity: dict[str, Any] | None = None
    """Per capability (and ``objective``), the score's change per +0.01 of each domain's data
    share at the chosen mixture, from exact gradients through the merge (None: not computed)."""
    intervals: ChosenIntervals | None = None
    """The bootstrap ensemble's intervals at the chosen mixture (None: search.predictor_intervals
    is 0, or a file written before they were recorded)."""
    measured: MeasuredChoice | None = None
    """The chosen mixture's measured proxy beside its prediction (None: not measured, see
    search.measure_chosen, or a file written before it was recorded)."""
    legacy: bool = False
    """Read from a file of demix < 0.2 (its ``weights`` were component weights)."""
    path: Path | None = None
    """The file it was read from (not written)."""

    def __post_init__(self) -> None:
        if self.component_weights is None and self.data_mixture is None:
            raise ValueError("it holds neither data_mixture nor component_weights")

    @property
    def domains(self) -> list[str]:
        return list(self.data_mixture if self.data_mixture is not None else self.component_weights or {})

    def mixture(self, which: str = "data") -> dict[str, float]:
        """The data mixture (``which="data"``, what to train on) or the component weights
        (``"components"``); a DemixError when the file does not hold that one."""
        where = f"'{self.path}'" if self.path else "best_mixture.json"
        if which == "components":
            if self.component_weights is None:
                raise DemixError(f"{where} holds no component weights (a hand-written data mixture)",
                                 "export its data mixture (the default, --weights data)")
            return self.component_weights
        if which != "data":
            raise DemixError(f"unknown mixture kind '{which}'", "use 'data' (the data mixture) or 'components'")
        if self.data_mixture is None:
            if self.legacy:
                raise DemixError(
                    f"{where} was written by demix < 0.2: its 'weights' {_short(self.component_weights)} are the "
                    "component weights of the merged proxies, not the data mixture to train on (every component was "
                    "trained on part general data, so the data they stand for has more general data)",
                    "rerun `demix search` on the run directory (finished rounds are read back, nothing is evaluated "
                    "again) to write both, or export the component weights knowingly with --weights components",
                )
            raise DemixError(f"{where} holds no data mixture", "rerun `demix search`, or use --weights components")
        return self.data_mixture

    def to_dict(self) -> dict[str, Any]:
        """The JSON object. Unset fields are left out, except the two a search always records,
        null meaning unknown: target_tokens and components."""
        searched = self.predicted is not None
        out: dict[str, Any] = {}
        if self.legacy:
            out["weights"] = self.component_weights
        else:
            for name in ("data_mixture", "component_weights"):
                if getattr(self, name) is not None:
                    out[name] = getattr(self, name)
        for name in ("unit", "mapping", "target_tokens", "domain_tokens", "tokens", "epochs", "domain_documents",
                     "mean_document_tokens"):
            value = getattr(self, name)
            if value is not None or (name == "target_tokens" and searched):
                out[name] = value
        parts = {
            "predicted": self.predicted.to_dict() if self.predicted else None,
            "top_k": self.top_k.to_dict() if self.top_k else None,
            "baselines": {k: b.to_dict() for k, b in self.baselines.items()} if self.baselines else None,
            "objective": self.objective.to_dict() if self.objective else None,
            "predictor": self.predictor.to_dict() if self.predictor else None,
            "rounds": [r.to_dict() for r in self.rounds] if self.rounds else None,
            "mixture_key": self.mixture_key,
        }
        out.update({k: v for k, v in parts.items() if v is not None})
        if searched or self.components is not None:
            out["components"] = self.components
        if self.settings is not None:
            out["settings"] = self.settings
        for name in ("refinement", "sensitivity"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        # Later fields: written only when set, so a file without them reads as it always did.
        if self.intervals is not None:
            out["intervals"] = self.intervals.to_dict()
        if self.measured is not None:
            out["measured"] = self.measured.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BestMixture:
        def opt(key: str, build: Callable[[Any], Any]) -> Any:
            return None if d.get(key) is None else build(d[key])

        legacy = "weights" in d and "component_weights" not in d and "data_mixture" not in d
        if not legacy and "component_weights" not in d and "data_mixture" not in d:
            raise KeyError("data_mixture")
        return cls(
            component_weights=json_mixture(d["weights"]) if legacy else opt("component_weights", json_mixture),
            data_mixture=None if legacy else opt("data_mixture", json_mixture),
            unit=d.get("unit"),
            mapping=opt("mapping", dict),
            target_tokens=opt("target_tokens", lambda x: json_number(x, "target_tokens")),
            domain_tokens=opt("domain_tokens", lambda x: json_numbers(x, "domain_tokens")),
            tokens=opt("tokens", lambda x: json_numbers(x, "tokens")),
            epochs=opt("epochs", lambda x: json_numbers(x, "epochs", optional=True)),
            domain_documents=opt("domain_documents", lambda x: json_numbers(x, "domain_documents")),
            mean_document_tokens=opt("mean_document_tokens", lambda x: json_numbers(x, "mean_document_tokens")),
            predicted=opt("predicted", Predictions.from_dict),
            top_k=opt("top_k", TopK.from_dict),
            baselines={k: Baseline.from_dict(b) for k, b in (d.get("baselines") or {}).items()},
            objective=opt("objective", ObjectiveSpec.from_dict),
            predictor=opt("predictor", PredictorSpec.from_dict),
            rounds=[RoundSummary.from_dict(r) for r in d.get("rounds") or []],
            mixture_key=d.get("mixture_key"),
            components=d.get("components"),
            settings=d.get("settings"),
            refinement=opt("refinement", dict),
            sensitivity=opt("sensitivity", dict),
            intervals=opt("intervals", ChosenIntervals.from_dict),
            measured=opt("measured", MeasuredChoice.from_dict),
            legacy=legacy,
        )

    def write(self, path: str | Path) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> BestMixture:
        best = read_record(path, "best_mixture.json", "run `demix search` first (it writes best_mixture.json)", cls.from_dict)
        best.path = Path(path)
        return best


def _short(weights: Mapping[str, float] | None) -> str:
    return "{" + ", ".join(f"{d} {w:.3g}" for d, w in (weights or {}).items()) + "}"
