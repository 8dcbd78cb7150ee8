"""Benchmarks, capabilities and results: what is scored, in which direction, and how it is grouped.

This module is pure (no torch): the search, the store and the report can resolve names and
directions without loading a model.

Conventions (the one place they are decided):

- A benchmark's *value* is the raw metric (bits per byte, accuracy, ...), as the evaluator reads it.
- Its *score* is the value sign-corrected so that higher is better: ``value`` when
  ``higher_is_better``, else ``-value``. Losses are negated, never inverted, so differences keep
  their units (bits per byte) and a ranking on scores is a ranking on values.
- A capability's score is the weighted mean of its benchmarks' scores (weights normalised to sum
  to 1). Capabilities therefore are always higher-is-better.
- Everything is keyed by name, never by position.

Defaults when the config leaves them empty:

- no benchmarks: one ``heldout_loss`` benchmark per domain, named ``heldout:<domain>``, metric
  ``bits_per_byte``.
- no capabilities: one capability per domain, named after the domain, holding that domain's
  heldout_loss benchmarks with equal weights; each lm_eval benchmark becomes a capability of
  its own, named after the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from demix.config import RunConfig
from demix.errors import DemixError

#: Metrics the held-out loss evaluator reports (all lower is better).
HELDOUT_METRICS = ("bits_per_byte", "loss_per_token")


def heldout_benchmark_name(domain: str) -> str:
    """Name of the default held-out loss benchmark of ``domain``."""
    return f"heldout:{domain}"


@dataclass(frozen=True)
class Benchmark:
    """One resolved benchmark: every field filled in and checked against the config.

    ``higher_is_better`` is None only for an lm_eval benchmark whose direction is read from the
    task when the task is loaded (:meth:`with_direction`).
    """

    name: str
    evaluator: str
    metric: str | None
    higher_is_better: bool | None
    domain: str | None = None
    task: str | None = None
    limit: int | None = None

    @property
    def heldout_domain(self) -> str:
        """``domain``, for a heldout_loss benchmark (:func:`resolve_benchmarks` requires one)."""
        assert self.domain is not None, f"benchmark '{self.name}' names no domain"
        return self.domain

    @property
    def lm_task(self) -> str:
        """``task``, for an lm_eval benchmark (:func:`resolve_benchmarks` requires one)."""
        assert self.task is not None, f"benchmark '{self.name}' names no task"
        return self.task

    def with_metric(self, metric: str, higher_is_better: bool) -> Benchmark:
        """A copy with the metric and direction filled in (lm_eval, once the task is loaded)."""
        hib = self.higher_is_better if self.higher_is_better is not None else higher_is_better
        return Benchmark(self.name, self.evaluator, metric, hib, self.domain, self.task, self.limit)


@dataclass(frozen=True)
class Capability:
    """A named group of benchmarks with weights normalised to sum to 1."""

    name: str
    weights: dict[str, float]


def resolve_benchmarks(config: RunConfig) -> list[Benchmark]:
    """The run's benchmarks, defaults filled in, checked against the domains.

    Raises DemixError for a duplicate name, an unknown domain, a heldout_loss benchmark without
    a domain or with an unknown metric or an upward direction, and an lm_eval benchmark without a task.
    """
    domains = config.data.domain_names
    ev = config.evaluation
    if not ev.benchmarks:
        return [
            Benchmark(heldout_benchmark_name(d), "heldout_loss", "bits_per_byte", False, domain=d) for d in domains
        ]
    out: list[Benchmark] = []
    seen: set[str] = set()
    for b in ev.benchmarks:
        where = f"evaluation.benchmarks '{b.name}'"
        if b.name in seen:
            raise DemixError(f"{where} is defined twice", "give every benchmark a unique name")
        seen.add(b.name)
        if b.evaluator == "heldout_loss":
            if b.domain is None:
                raise DemixError(f"{where} (heldout_loss) names no domain", f"set domain to one of {domains}")
            if b.domain not in domains:
                raise DemixError(
                    f"{where} names unknown domain '{b.domain}'", f"use one of the run's domains {domains}"
                )
            metric = b.metric or "bits_per_byte"
            if metric not in HELDOUT_METRICS:
                raise DemixError(
                    f"{where} asks for unknown metric '{metric}' of the heldout_loss evaluator",
                    f"use one of {list(HELDOUT_METRICS)}",
                )
            if b.higher_is_better:
                raise DemixError(
                    f"{where}: {metric} is a loss (lower is better), but higher_is_better is true",
                    "remove higher_is_better (or set it to false)",
                )
            if b.task is not None or b.limit is not None:
                raise DemixError(
                    f"{where}: task/limit apply to lm_eval benchmarks, not heldout_loss",
                    "remove them, or set evaluator: lm_eval",
                )
            out.append(Benchmark(b.name, "heldout_loss", metric, False, domain=b.domain))
        else:
            if not b.task:
                raise DemixError(
                    f"{where} (lm_eval) names no task",
                    "set task to a shipped task (demix_math, demix_humaneval, demix_heldout_mc_<domain>, ...) "
                    "or a task in evaluation.task_dirs",
                )
            if b.domain is not None:
                raise DemixError(f"{where}: domain applies to heldout_loss benchmarks, not lm_eval", "remove it")
            out.append(Benchmark(b.name, "lm_eval", b.metric, b.higher_is_better, task=b.task, limit=b.limit))
    return out


def resolve_capabilities(config: RunConfig, benchmarks: list[Benchmark] | None = None) -> list[Capability]:
    """The run's capabilities with normalised weights (defaults when none are configured).

    Raises DemixError for a duplicate capability, an unknown benchmark, or weights that are
    negative, non-finite or all zero.
    """
    benchmarks = resolve_benchmarks(config) if benchmarks is None else benchmarks
    names = [b.name for b in benchmarks]
    if not config.evaluation.capabilities:
        groups: dict[str, list[str]] = {}
        for b in benchmarks:
            groups.setdefault(b.heldout_domain if b.evaluator == "heldout_loss" else b.name, []).append(b.name)
        return [Capability(c, {n: 1.0 / len(members) for n in members}) for c, members in groups.items()]
    out: list[Capability] = []
    seen: set[str] = set()
    for c in config.evaluation.capabilities:
        where = f"evaluation.capabilities '{c.name}'"
        if c.name in seen:
            raise DemixError(f"{where} is defined twice", "give every capability a unique name")
        seen.add(c.name)
        unknown = [n for n in c.benchmarks if n not in names]
        if unknown:
            raise DemixError(f"{where} names unknown benchmark(s) {unknown}", f"use the benchmark names {names}")
        bad = {n: w for n, w in c.benchmarks.items() if not math.isfinite(w) or w < 0}
        total = sum(c.benchmarks.values())
        if bad or total <= 0:
            raise DemixError(
                f"{where} has invalid weights {bad or c.benchmarks}", "use non-negative weights, at least one positive"
            )
        out.append(Capability(c.name, {n: w / total for n, w in c.benchmarks.items()}))
    return out


def scoring_settings(config: RunConfig) -> dict[str, Any]:
    """The evaluation settings a model's scores depend on, by config key (what each stored
    evaluation records, so that scores made under other settings are never mixed with these).

    In: the resolved benchmarks and capabilities, ``heldout_tokens``, ``task_dirs``, ``seed`` and
    ``model.seq_len`` (the held-out window and the longest answer). Out, because they do not
    change a score: ``evaluation.device`` and ``evaluation.batch_size`` (the same model gives the
    same score up to float rounding on any device or batch)."""
    ev = config.evaluation
    benchmarks = resolve_benchmarks(config)
    return {
        "evaluation.benchmarks": [dict(vars(b)) for b in benchmarks],
        "evaluation.capabilities": {c.name: c.weights for c in resolve_capabilities(config, benchmarks)},
        "evaluation.heldout_tokens": ev.heldout_tokens,
        "evaluation.task_dirs": list(ev.task_dirs),
        "evaluation.seed": ev.seed,
        "model.seq_len": config.model.seq_len,
    }


def sign_correct(value: float, higher_is_better: bool) -> float:
    """The benchmark's score: its value, negated when lower is better."""
    return float(value) if higher_is_better else -float(value)


def aggregate_capabilities(
    values: Mapping[str, float], directions: Mapping[str, bool], capabilities: list[Capability]
) -> dict[str, float]:
    """Capability scores (higher is better) from raw benchmark values keyed by name."""
    out: dict[str, float] = {}
    for cap in capabilities:
        missing = [n for n in cap.weights if n not in values]
        if missing:
            raise DemixError(
                f"capability '{cap.name}' needs benchmark(s) {missing}, which were not evaluated",
                "check evaluation.capabilities against evaluation.benchmarks",
            )
        out[cap.name] = sum(w * sign_correct(values[n], directions[n]) for n, w in cap.weights.items())
    return out


@dataclass
class EvalResult:
    """The scores of one model.

    ``benchmarks``: {benchmark name: raw metric value} (bits per byte: lower is better).
    ``capabilities``: {capability name: score}, sign-corrected so that HIGHER IS BETTER.
    ``higher_is_better``: {benchmark name: direction of its raw value}.
    ``details``: per benchmark, what lies behind the value (tokens, bytes, samples, the other metrics).
    """

    benchmarks: dict[str, float]
    capabilities: dict[str, float]
    higher_is_better: dict[str, bool]
    metrics: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def scores(self) -> dict[str, float]:
        """Benchmark values sign-corrected so that higher is better (what rankings use)."""
        return {n: sign_correct(v, self.higher_is_better[n]) for n, v in self.benchmarks.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what `demix eval --out` writes)."""
        return {
            "benchmarks": dict(self.benchmarks),
            "capabilities": dict(self.capabilities),
            "higher_is_better": dict(self.higher_is_better),
            "metrics": dict(self.metrics),
            "details": {k: dict(v) for k, v in self.details.items()},
            "seconds": self.seconds,
        }
