"""The DeMix search loop: evaluate proxies for sampled mixtures, fit predictors, rank a candidate
pool, pick the mean of the top-k, and repeat in the predicted top region.

Round r (sizes in ``search.rounds``):

1. *Plan*: round 0 samples the (bounded) simplex around the prior; round r > 0 draws from the
   top region (the best ``search.region_size`` candidates, default top_k) of the pool ranked
   after round r - 1. The plan is drawn from the seed alone (no clock, no state) and written to
   ``round_<r>/planned.json`` before the first evaluation, so a resumed search evaluates the
   same mixtures.
2. *Evaluate*: every planned mixture not already in the store is scored and committed to the
   store before the next one starts.
3. *Fit*: predictors for every capability and benchmark on all evaluations so far, with a
   k-fold CV report (``cv.json``) and the fit itself (``predictors/``).
4. *Rank*: a fresh pool of ``search.pool_size`` candidates, predicted capabilities, constraints,
   objective; top-k mean and spread (``selection.json``), the pool (``pool.npz``) and the Pareto
   front across capabilities among the best-ranked candidates (``pareto.csv``).

The selection after the last round is written to ``best_mixture.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from demix.config import RunConfig
from demix.errors import DemixError
from demix.mixtures import (
    Bounds,
    mixture_key,
    mixtures_to_rows,
    prior_weights,
    resolve_bounds,
    rows_to_mixtures,
    sample_mixtures,
)
from demix.objectives import feasible, objective_values, parse_constraints, pareto_front, select_top_k
from demix.predictors import Predictors, cross_validate, fit_predictors
from demix.rundir import RunDir, atomic_write_text, read_json, write_json
from demix.store import Evaluation, Store

log = logging.getLogger("demix.search")

Scorer = Callable[[dict[str, float]], Any]


# --------------------------------------------------------------------------- small pieces


def _result_parts(result: Any) -> tuple[dict[str, float], dict[str, float], dict[str, bool] | None]:
    """benchmarks, capabilities and (optional) directions of a scorer's result (object or dict)."""
    get = result.get if isinstance(result, Mapping) else lambda k, d=None: getattr(result, k, d)
    benchmarks, capabilities = get("benchmarks"), get("capabilities")
    if not isinstance(benchmarks, Mapping) or not isinstance(capabilities, Mapping):
        raise DemixError(
            f"the scorer returned {type(result).__name__}, without .benchmarks and .capabilities mappings",
            "return an EvalResult (demix.evaluation) or an object with those two dicts",
        )
    hib = get("higher_is_better")
    return dict(benchmarks), dict(capabilities), dict(hib) if isinstance(hib, Mapping) else None


def expected_capabilities(config: RunConfig) -> list[str]:
    """Capability names the evaluation reports (the evaluation's own defaults when none are set)."""
    from demix.evaluation.benchmarks import resolve_capabilities

    return [c.name for c in resolve_capabilities(config)]


def read_token_counts(run: RunDir, domains: Sequence[str]) -> dict[str, int]:
    """Domain token counts from the prepared data (``data/<domain>/train.meta.json``)."""
    counts = {}
    for d in domains:
        path = run.data / d / "train.meta.json"
        if not path.is_file():
            raise DemixError(f"no prepared data for domain '{d}' ({path} is missing)", "run `demix prepare` first")
        try:
            counts[d] = int(json.loads(path.read_text())["tokens"])
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            raise DemixError(f"cannot read the token count in '{path}' ({exc})", "rerun `demix prepare`") from None
    return counts


def _read_documents(run: RunDir, domains: Sequence[str]) -> dict[str, int] | None:
    docs = {}
    for d in domains:
        try:
            docs[d] = int(json.loads((run.data / d / "train.meta.json").read_text())["documents"])
        except (OSError, KeyError, ValueError):
            return None
    return docs


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent deterministic streams per (round, purpose): resumes redraw the same values."""
    return np.random.default_rng([seed, *stream])


# --------------------------------------------------------------------------- fitting and ranking


@dataclass
class Fit:
    """Predictors fitted on the evaluations so far, with their CV reports."""

    capabilities: Predictors
    benchmarks: Predictors
    cv: dict[str, dict[str, dict[str, Any]]]
    higher_is_better: dict[str, bool]
    n: int


def training_data(
    evaluations: Sequence[Evaluation], domains: Sequence[str], higher_is_better: Mapping[str, bool]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Mixtures (n, K), capability scores and sign-corrected benchmark scores (higher is better)."""
    if not evaluations:
        raise DemixError("no finished evaluations to fit predictors on", "evaluate at least a few mixtures")
    unknown = sorted({d for e in evaluations for d in e.weights if d not in domains})
    if unknown:
        raise DemixError(
            f"the store holds mixtures over domain(s) {unknown} that this run does not have",
            "use a new output_dir (or store.url) for a run with different domains",
        )
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
    names = sorted({b for e in evaluations for b in e.benchmarks})
    from demix.evaluation.benchmarks import resolve_benchmarks

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
    """Fit capability and benchmark predictors on the evaluations, with their CV reports."""
    X, caps, benches = training_data(evaluations, domains, higher_is_better)
    cv = {
        "capabilities": cross_validate(X, caps, kind, folds, seed),
        "benchmarks": cross_validate(X, benches, kind, folds, seed),
    }
    return Fit(
        capabilities=fit_predictors(X, caps, kind, domains, seed),
        benchmarks=fit_predictors(X, benches, kind, domains, seed),
        cv=cv,
        higher_is_better=dict(higher_is_better),
        n=X.shape[0],
    )


@dataclass
class Ranking:
    """A ranked candidate pool."""

    weights: np.ndarray  # (n, K)
    capability_scores: np.ndarray  # (n, C) predicted, higher is better
    capabilities: list[str]
    objective: np.ndarray  # (n,), -inf where a constraint fails
    order: np.ndarray  # feasible candidates, best first
    top_k: np.ndarray  # indices of the top-k, best first
    mean: np.ndarray  # (K,) mean of the top-k
    spread: dict[str, np.ndarray]
    reference: dict[str, dict[str, float]]  # natural / uniform: predicted capabilities and weights


def reference_mixtures(domains: Sequence[str], token_counts: Mapping[str, float] | None) -> dict[str, np.ndarray]:
    """The natural (token-proportional) and uniform mixtures."""
    out = {"uniform": np.full(len(domains), 1.0 / len(domains))}
    if token_counts:
        out["natural"] = prior_weights(domains, "tokens", token_counts)
    return out


def rank_pool(
    pool: np.ndarray,
    fit: Fit,
    config: RunConfig,
    token_counts: Mapping[str, float] | None,
) -> Ranking:
    """Predict, constrain and rank a candidate pool; the top-k mean is the chosen mixture."""
    s = config.search
    domains = config.data.domain_names
    caps = fit.capabilities.targets
    constraints = parse_constraints(s.constraints, caps, domains)
    scores = fit.capabilities.predict_matrix(pool, caps)
    refs = reference_mixtures(domains, token_counts)
    reference: dict[str, dict[str, float]] = {}
    for name, w in refs.items():
        pred = fit.capabilities.predict_matrix(w[None, :], caps)[0]
        reference[name] = {**{c: float(v) for c, v in zip(caps, pred)}, **{f"weight.{d}": float(x) for d, x in zip(domains, w)}}
    if any(c.right == "natural" for c in constraints) and "natural" not in reference:
        raise DemixError("a constraint compares with 'natural' but the domain token counts are unknown", "run `demix prepare` first")
    values = objective_values(s.objective, scores, caps, s.capability_weights)
    ok = feasible(constraints, pool, scores, caps, domains, reference)
    if not ok.any():
        raise DemixError(
            f"no candidate of the pool satisfies the constraints {s.constraints}",
            "relax search.constraints (or widen search.bounds)",
        )
    values = np.where(ok, values, -np.inf)
    mean, spread, top = select_top_k(pool, values, s.top_k)
    feasible_idx = np.flatnonzero(ok)
    order = feasible_idx[np.argsort(-values[feasible_idx], kind="stable")]
    return Ranking(pool, scores, caps, values, order, top, mean, spread, reference)


# --------------------------------------------------------------------------- progress


class _Reporter:
    """Progress bar plus a live table of the best predicted mixtures (rich), or nothing."""

    def __init__(self, enabled: bool, domains: Sequence[str]) -> None:
        self.enabled = enabled
        self.domains = list(domains)
        self.live = None
        if not enabled:
            return
        from rich.console import Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.table import Table

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
        )
        self.table = Table(title="best predicted mixtures (none yet)")
        self._group = Group
        self.live = Live(Group(self.progress, self.table), refresh_per_second=4, transient=False)
        self.live.start()
        self.task = None

    def round(self, r: int, total: int, done: int) -> None:
        if self.live is None:
            return
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"round {r}: proxies", total=total, completed=done)

    def advance(self) -> None:
        if self.live is not None and self.task is not None:
            self.progress.advance(self.task)

    def ranked(self, r: int, ranking: Ranking, n_eval: int, rows: int = 5) -> None:
        if self.live is None:
            return
        from rich.table import Table

        table = Table(title=f"best predicted mixtures after round {r} ({n_eval} evaluations)")
        table.add_column("#")
        for d in self.domains:
            table.add_column(d, justify="right")
        for c in ranking.capabilities:
            table.add_column(f"{c} (pred)", justify="right")
        table.add_column("objective", justify="right")
        best = [("top-k mean", ranking.mean, None)] + [
            (str(i + 1), ranking.weights[j], j) for i, j in enumerate(ranking.order[:rows])
        ]
        for label, w, j in best:
            caps = ["" for _ in ranking.capabilities] if j is None else [f"{v:.4g}" for v in ranking.capability_scores[j]]
            obj = "" if j is None else f"{ranking.objective[j]:.4f}"
            table.add_row(label, *[f"{x:.3f}" for x in w], *caps, obj)
        self.table = table
        self.live.update(self._group(self.progress, table))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


# --------------------------------------------------------------------------- the loop


@dataclass
class SearchResult:
    """What a search found; the same content is in ``best_mixture.json``."""

    weights: dict[str, float]
    best: dict[str, Any]
    evaluations: int
    evaluated_now: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None


def _plan_round(
    r: int,
    n: int,
    config: RunConfig,
    prior: np.ndarray,
    bounds: Bounds,
    previous: Ranking | None,
    done: set[str],
) -> np.ndarray:
    s = config.search
    domains = config.data.domain_names
    rng = _rng(s.seed, r, 0)
    if r == 0 or previous is None:
        return sample_mixtures(domains, n, prior, s.sampler, bounds, rng)
    region = previous.order[: max(s.region_size or s.top_k, n)]
    region = np.array([i for i in region if mixture_key(dict(zip(domains, previous.weights[i]))) not in done], dtype=int)
    if region.size == 0:
        return np.zeros((0, len(domains)))
    pick = rng.choice(region, size=min(n, region.size), replace=False)
    return previous.weights[np.sort(pick)]


def _load_or_plan(rd: Path, r: int, n: int, make: Callable[[], np.ndarray], domains: Sequence[str]) -> list[dict[str, float]]:
    path = rd / "planned.json"
    if path.is_file():
        try:
            data = read_json(path)
            mixtures = [{d: float(v) for d, v in m.items()} for m in data["mixtures"]]
        except (KeyError, ValueError, AttributeError, json.JSONDecodeError) as exc:
            raise DemixError(f"cannot read the plan '{path}' ({exc})", "delete it (the round is planned again)") from None
        if data.get("size") != n:
            raise DemixError(
                f"round {r} was planned with {data.get('size')} proxies, search.rounds now asks for {n}",
                "restore search.rounds, or start a new output_dir",
            )
        if list(data.get("domains", [])) != list(domains):
            raise DemixError(f"round {r} was planned for domains {data.get('domains')}", "use a new output_dir for new domains")
        return mixtures
    mixtures = rows_to_mixtures(domains, make())
    write_json(path, {"round": r, "size": n, "domains": list(domains), "mixtures": mixtures, "keys": [mixture_key(m) for m in mixtures]})
    return mixtures


def _write_fit(rd: Path, fit: Fit) -> None:
    fit.capabilities.save(rd / "predictors" / "capabilities")
    fit.benchmarks.save(rd / "predictors" / "benchmarks")
    write_json(rd / "cv.json", {"n": fit.n, "higher_is_better": fit.higher_is_better, **fit.cv})


PARETO_CANDIDATES = 5000
"""pareto.csv holds the Pareto-optimal candidates among this many best-ranked ones."""


def _write_ranking(rd: Path, ranking: Ranking, domains: Sequence[str], fit: Fit) -> dict[str, Any]:
    _atomic_savez(
        rd / "pool.npz",
        weights=ranking.weights,
        capability_scores=ranking.capability_scores,
        objective=ranking.objective,
        top_k=ranking.top_k,
        domains=np.array(domains),
        capabilities=np.array(ranking.capabilities),
    )
    # The front among the best PARETO_CANDIDATES by objective is the pool's front restricted to
    # them (up to ties at the cut): both objectives are monotone in every capability, so whatever
    # dominates a candidate ranks at least as high. The whole pool would cost O(n x front), and
    # with smooth predictors half of a 200k pool can be on the front (tens of minutes).
    head = ranking.order[:PARETO_CANDIDATES]
    front = pareto_front(ranking.capability_scores[head]) if head.size else np.zeros(0, dtype=int)
    idx = head[front]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*domains, *[f"pred_{c}" for c in ranking.capabilities], "objective"])
    for i in idx:
        writer.writerow([f"{x:.6f}" for x in ranking.weights[i]] + [f"{v:.6g}" for v in ranking.capability_scores[i]] + [f"{ranking.objective[i]:.6f}"])
    atomic_write_text(rd / "pareto.csv", buf.getvalue())
    selection = {
        "weights": dict(zip(domains, map(float, ranking.mean))),
        "spread": {d: {k: float(v[j]) for k, v in ranking.spread.items()} for j, d in enumerate(domains)},
        "top_k": int(ranking.top_k.size),
        "pool_size": int(ranking.weights.shape[0]),
        "feasible": int(ranking.order.size),
        "pareto_size": int(idx.size),
        "pareto_over": int(head.size),
        "evaluations": fit.n,
    }
    write_json(rd / "selection.json", selection)
    return selection


def _predicted(fit: Fit, w: np.ndarray) -> dict[str, dict[str, dict[str, Any]]]:
    """Predicted scores of one mixture with the CV error of each predictor (benchmarks in raw units)."""
    out: dict[str, dict[str, dict[str, Any]]] = {"capabilities": {}, "benchmarks": {}}
    for c, v in fit.capabilities.predict(w[None, :]).items():
        cv = fit.cv["capabilities"][c]
        out["capabilities"][c] = {"value": float(v[0]), "cv_rmse": cv["rmse"], "cv_mae": cv["mae"], "cv_spearman": cv["spearman"], "cv_n": cv["n"]}
    for b, v in fit.benchmarks.predict(w[None, :]).items():
        cv = fit.cv["benchmarks"][b]
        sign = 1.0 if fit.higher_is_better[b] else -1.0
        out["benchmarks"][b] = {
            "value": float(sign * v[0]),
            "higher_is_better": fit.higher_is_better[b],
            "cv_rmse": cv["rmse"],
            "cv_mae": cv["mae"],
            "cv_spearman": cv["spearman"],
            "cv_n": cv["n"],
        }
    return out


def best_mixture_document(
    config: RunConfig,
    ranking: Ranking,
    fit: Fit,
    token_counts: Mapping[str, float] | None,
    documents: Mapping[str, int] | None,
    rounds: list[dict[str, Any]],
) -> dict[str, Any]:
    """The content of ``best_mixture.json``."""
    s = config.search
    domains = config.data.domain_names
    w = ranking.mean
    target = s.target_tokens or (int(sum(token_counts[d] for d in domains)) if token_counts else None)
    doc: dict[str, Any] = {
        "weights": dict(zip(domains, map(float, w))),
        "unit": "token share (fraction of training tokens drawn from each domain)",
        "target_tokens": target,
    }
    if token_counts and target:
        doc["domain_tokens"] = {d: int(token_counts[d]) for d in domains}
        doc["tokens"] = {d: int(round(x * target)) for d, x in zip(domains, w)}
        doc["epochs"] = {d: (float(x * target / token_counts[d]) if token_counts[d] else None) for d, x in zip(domains, w)}
    if token_counts and documents:
        doc["domain_documents"] = {d: int(documents[d]) for d in domains}
        doc["mean_document_tokens"] = {d: float(token_counts[d]) / max(1, documents[d]) for d in domains}
    doc["predicted"] = _predicted(fit, w)
    doc["top_k"] = {
        "k": int(ranking.top_k.size),
        "pool_size": int(ranking.weights.shape[0]),
        "spread": {d: {k: float(v[j]) for k, v in ranking.spread.items()} for j, d in enumerate(domains)},
    }
    doc["baselines"] = {
        name: {"weights": dict(zip(domains, map(float, m))), "predicted": _predicted(fit, m)}
        for name, m in reference_mixtures(domains, token_counts).items()
    }
    doc["objective"] = {"kind": s.objective, "capability_weights": s.capability_weights, "constraints": s.constraints}
    doc["predictor"] = {"kind": fit.capabilities.kind, "n": fit.n, "cv_folds": s.cv_folds}
    doc["rounds"] = rounds
    doc["mixture_key"] = mixture_key(doc["weights"])
    return doc


def component_fingerprint(config: RunConfig, run: RunDir) -> str | None:
    """Identity of the weights merged proxies are built from: size and modification time of the
    base's and every component's safetensors files (cheap: no weights are read). None when the
    run has no checkpoints (a search on a synthetic scorer).

    Stored with every merged evaluation, it lets a resumed search refuse evaluations made with
    components that have since been retrained.
    """
    import hashlib

    dirs = [Path(config.model.base_path) if config.model.base_path else run.base]
    dirs += [Path(config.train.components.paths.get(d, run.component(d))) for d in config.data.domain_names]
    parts = []
    for i, d in enumerate(dirs):
        for f in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
            st = f.stat()
            parts.append(f"{i}/{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16] if parts else None


def _check_components_unchanged(evaluations: Sequence[Evaluation], fingerprint: str | None, store_name: str) -> None:
    stale = [e for e in evaluations if e.provenance.get("components") not in (None, fingerprint)]
    if fingerprint is not None and stale:
        raise DemixError(
            f"the store {store_name} holds {len(stale)} merged evaluation(s) of other components: the base or "
            "components were retrained or replaced since they were evaluated",
            "search with the new components in a new output_dir, or delete the store and the search/ directory "
            "of this run to evaluate again",
        )


def run_search(
    config: RunConfig,
    run: RunDir,
    scorer: Scorer,
    token_counts: Mapping[str, float] | None,
    store: Store | None = None,
    progress: bool = True,
    higher_is_better: Mapping[str, bool] | None = None,
    proxy_kind: str = "merged",
    executor: Any = None,
) -> SearchResult:
    """Run (or resume) the search rounds of ``config.search`` and write ``best_mixture.json``.

    ``executor`` (a :class:`demix.executors.Executor`) evaluates each round's mixtures, e.g. on a
    Ray cluster; default: ``scorer`` in this process.

    ``scorer(mixture)`` evaluates one proxy and returns an object with ``.benchmarks`` (raw
    metrics) and ``.capabilities`` (higher is better). Every result is committed to ``store``
    (default: ``store.url`` or the run's sqlite file) before the next call; mixtures already in
    the store are never scored again.
    """
    s = config.search
    domains = config.data.domain_names
    if not s.rounds or any(n <= 0 for n in s.rounds):
        raise DemixError(f"search.rounds must be positive proxy counts, got {s.rounds}", "e.g. search.rounds: [32, 16, 8]")
    # Fail on a bad objective before any proxy is evaluated.
    expected = expected_capabilities(config)
    parse_constraints(s.constraints, expected, domains)
    from demix.objectives import capability_weights

    capability_weights(expected, s.capability_weights)
    bounds = resolve_bounds(domains, s.bounds, token_counts, s.target_tokens)
    prior = prior_weights(domains, s.sampler.prior, token_counts)
    documents = _read_documents(run, domains)
    own_store = store is None
    store = store or Store(config.store.url or run.store_url, lease_seconds=config.store.lease_seconds)
    from demix.executors import LocalExecutor, evaluate_planned

    executor = executor if executor is not None else LocalExecutor(scorer)
    fingerprint = component_fingerprint(config, run)
    # Never print a server URL: it may hold a password.
    store_name = "of store.url" if config.store.url else str(run.root / "store.sqlite")
    _check_components_unchanged(store.evaluations_done(proxy_kind), fingerprint, store_name)
    released = store.release_pending(proxy_kind)
    if released:
        log.info("released %d unfinished evaluation(s) of a killed search", released)
    reporter = _Reporter(progress, domains)
    evaluated_now = 0
    rounds: list[dict[str, Any]] = []
    previous: Ranking | None = None
    fit: Fit | None = None
    try:
        for r, n in enumerate(s.rounds):
            rd = run.round_dir(r)
            done = store.done_keys(proxy_kind)
            planned = _load_or_plan(rd, r, n, lambda: _plan_round(r, n, config, prior, bounds, previous, done), domains)
            todo = [(i, m) for i, m in enumerate(planned) if mixture_key(m) not in done]
            reporter.round(r, len(planned), len(planned) - len(todo))
            log.info("round %d: %d planned, %d to evaluate", r, len(planned), len(todo))

            def commit(i: int, m: dict[str, float], result: Any, r: int = r) -> bool:
                bench, caps, hib = _result_parts(result)
                provenance = {
                    "round": r,
                    "plan_index": i,
                    "seed": s.seed,
                    "merge_method": config.merge.method,
                    "source": "demix search",
                    "components": fingerprint,
                    "higher_is_better": hib or {b.name: b.higher_is_better for b in config.evaluation.benchmarks if b.name in bench},
                }
                stored = store.complete(m, bench, caps, proxy_kind, provenance)
                reporter.advance()
                return stored

            # Claims each mixture just before dispatch, commits each result as it arrives, and
            # returns once every planned mixture is done (by this driver or another).
            evaluated_now += evaluate_planned(
                executor, store, planned, commit, round=r, proxy_kind=proxy_kind, wait_seconds=config.store.wait_seconds
            )
            # Completion order depends on workers and drivers; the fit must not.
            evaluations = sorted(
                store.evaluations_done(proxy_kind),
                key=lambda e: (e.round if e.round is not None else -1, e.provenance.get("plan_index", -1), e.mixture_key),
            )
            directions = resolve_directions(evaluations, config, higher_is_better)
            fit = fit_all(evaluations, domains, directions, s.predictor, s.cv_folds, s.seed)
            _write_fit(rd, fit)
            pool = sample_mixtures(domains, s.pool_size, prior, s.sampler, bounds, _rng(s.seed, r, 1))
            previous = rank_pool(pool, fit, config, token_counts)
            selection = _write_ranking(rd, previous, domains, fit)
            rounds.append({"round": r, "planned": len(planned), "evaluations": fit.n, "weights": selection["weights"]})
            reporter.ranked(r, previous, fit.n)
        assert previous is not None and fit is not None
        best = best_mixture_document(config, previous, fit, token_counts, documents, rounds)
        # So `demix run` can tell a search of retrained components from a finished one.
        best["components"] = fingerprint
        write_json(run.best_mixture, best)
    finally:
        reporter.close()
        if own_store:
            store.close()
    return SearchResult(best["weights"], best, fit.n, evaluated_now, rounds, run.best_mixture)
