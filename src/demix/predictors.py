"""Predictors: regressors from a mixture (a row of domain weights) to scores, one per target.

A target is a benchmark or a capability, always on the higher-is-better scale (the search
negates lower-is-better benchmarks before fitting). Two kinds share one interface:

- ``lightgbm``: the DeMix reference (300 boosting rounds, learning rate 0.01), with the
  small-sample settings adapted to n: LightGBM's default ``min_child_samples=20`` cannot split
  a node of a few dozen proxies, so it is ``max(2, min(20, n // 8))``.
- ``ridge``: a model linear in its coefficients (scikit-learn RidgeCV, penalty chosen by
  leave-one-out) on the weights and their pairwise products, the fallback for small n where
  trees overfit. The products let it fit an optimum inside the simplex (a score that peaks at
  30% math), which a model linear in the weights cannot.

``auto`` picks ridge below :data:`AUTO_MIN_LIGHTGBM` evaluations. Fits are saved as text
(LightGBM model files, Ridge coefficients in JSON), never pickled.

Why one module of ~480 lines: the two kinds, their cross-validation and the bootstrap ensemble
built from them share one fit/predict/save interface and the same row checks; the ensemble's
intervals are only meaningful next to the fits they resample.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from demix.errors import DemixError
from demix.rundir import atomic_write_text, write_json

#: ``auto`` uses LightGBM from this many evaluations on, Ridge below.
AUTO_MIN_LIGHTGBM = 32
#: The reference LightGBM settings of the DeMix code.
LIGHTGBM_ROUNDS = 300
LIGHTGBM_LEARNING_RATE = 0.01
KINDS = ("auto", "lightgbm", "ridge")


def resolve_kind(kind: str, n: int) -> str:
    """The concrete predictor kind for ``n`` training rows."""
    if kind not in KINDS:
        raise DemixError(f"unknown predictor '{kind}'", f"use one of {', '.join(KINDS)}")
    if kind == "auto":
        return "lightgbm" if n >= AUTO_MIN_LIGHTGBM else "ridge"
    return kind


def lightgbm_params(n: int, seed: int = 0) -> dict[str, Any]:
    """LightGBM settings for ``n`` training rows (reference rounds and rate; leaves and minimum
    child size scaled so that trees can split on a few dozen rows)."""
    return {
        "objective": "regression",
        "n_estimators": LIGHTGBM_ROUNDS,
        "learning_rate": LIGHTGBM_LEARNING_RATE,
        "num_leaves": 31 if n >= 256 else 15,
        "min_child_samples": max(2, min(20, n // 8)),
        "min_data_in_bin": 1,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "random_state": seed,
        "deterministic": True,
        "force_row_wise": True,
        # One thread: fits are tiny, and threads fight the evaluations for the cores.
        "num_threads": 1,
        "verbose": -1,
    }


@dataclass
class Predictors:
    """One fitted regressor per target; ``predict`` returns ``{target: scores}``."""

    kind: str
    domains: list[str]
    targets: list[str]
    models: dict[str, Any] = field(repr=False)
    n: int = 0
    _compiled: dict[str, TreeEnsemble] = field(default_factory=dict, repr=False)

    def predict(self, weights: np.ndarray, targets: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Predicted scores (higher is better) for each row of ``weights`` (n, K)."""
        X = np.ascontiguousarray(np.atleast_2d(weights), dtype=np.float64)
        if X.shape[1] != len(self.domains):
            raise DemixError(
                f"mixtures have {X.shape[1]} columns, the predictors were fitted on {len(self.domains)} domains",
                "give one column per domain, in the fit's order",
            )
        out: dict[str, np.ndarray] = {}
        for t in targets if targets is not None else self.targets:
            if t not in self.models:
                raise DemixError(f"no predictor for '{t}'", f"known targets: {self.targets}")
            model = self.models[t]
            if self.kind == "lightgbm":
                if t not in self._compiled:
                    self._compiled[t] = TreeEnsemble(model)
                out[t] = self._compiled[t].predict(X)
            else:
                coef, intercept = model
                out[t] = quadratic_features(X) @ coef + intercept
        return out

    def predict_matrix(self, weights: np.ndarray, targets: Sequence[str]) -> np.ndarray:
        """Predictions as an (n, len(targets)) array."""
        pred = self.predict(weights, targets)
        return np.stack([pred[t] for t in targets], axis=1) if targets else np.zeros((len(weights), 0))

    def save(self, directory: Path) -> None:
        """Write the fit as text: ``predictors.json`` plus one LightGBM model file per target."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"kind": self.kind, "domains": self.domains, "targets": self.targets, "n": self.n}
        if self.kind == "lightgbm":
            files = {}
            for i, t in enumerate(self.targets):
                name = f"lightgbm_{i}.txt"
                atomic_write_text(directory / name, self.models[t].model_to_string())
                files[t] = name
            meta["files"] = files
        else:
            meta["ridge"] = {t: {"coef": list(map(float, c)), "intercept": float(b)} for t, (c, b) in self.models.items()}
        write_json(directory / "predictors.json", meta)

    @classmethod
    def load(cls, directory: Path) -> Predictors:
        """Read a fit written by :meth:`save`."""
        directory = Path(directory)
        path = directory / "predictors.json"
        try:
            meta = json.loads(path.read_text())
            models: dict[str, Any]  # a Booster per target (lightgbm), or (coef, intercept) (ridge)
            if meta["kind"] == "lightgbm":
                import lightgbm as lgb

                models = {t: lgb.Booster(model_str=(directory / f).read_text()) for t, f in meta["files"].items()}
            else:
                models = {t: (np.array(v["coef"]), float(v["intercept"])) for t, v in meta["ridge"].items()}
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise DemixError(f"cannot read the predictor fit in '{directory}' ({exc})", "rerun `demix search` to refit") from None
        return cls(meta["kind"], list(meta["domains"]), list(meta["targets"]), models, int(meta.get("n", 0)))


class TreeEnsemble:
    """A fitted LightGBM regressor flattened into arrays and evaluated by a small numba kernel.

    Why not ``Booster.predict``: ranking a 200k pool with 300 trees of ~8 levels is ~500M node
    visits per target; LightGBM walks each row through each tree with data-dependent branches
    (about 2.8x the CPU time of this kernel, measured in benchmarks/search_speed.py). Here every
    tree is padded to a fixed depth (leaves loop onto themselves), so a block of rows steps
    through a tree level by level without unpredictable branches, in parallel over blocks.
    Results equal ``Booster.predict`` exactly (same thresholds and ``<=``; tested). Inputs must
    be finite (mixture weights are), so LightGBM's missing-value paths never apply.
    """

    BLOCK = 512  # rows stepped through a tree together (fits in L1 with their node indices)

    def __init__(self, booster: Any) -> None:
        feat: list[int] = []
        thr: list[float] = []
        left: list[int] = []
        right: list[int] = []
        value: list[float] = []
        roots: list[int] = []
        depths: list[int] = []

        def walk(node: dict, depth: int) -> tuple[int, int]:
            i = len(feat)
            # A leaf is a node that sends every row to itself: +inf threshold, both children = i.
            feat.append(0)
            thr.append(np.inf)
            left.append(i)
            right.append(i)
            value.append(0.0)
            if "leaf_value" in node:
                value[i] = float(node["leaf_value"])
                return i, depth
            if node.get("decision_type", "<=") != "<=" or node.get("missing_type", "None") == "Zero":
                raise DemixError("the LightGBM model uses a split this evaluator does not support", "refit with demix")
            feat[i], thr[i] = int(node["split_feature"]), float(node["threshold"])
            left[i], dl = walk(node["left_child"], depth + 1)
            right[i], dr = walk(node["right_child"], depth + 1)
            return i, max(dl, dr)

        for tree in booster.dump_model()["tree_info"]:
            root, depth = walk(tree["tree_structure"], 0)
            roots.append(root)
            depths.append(depth)
        self.arrays = (
            np.array(feat, dtype=np.int64),
            np.array(thr, dtype=np.float64),
            np.array(left, dtype=np.int64),
            np.array(right, dtype=np.int64),
            np.array(value, dtype=np.float64),
            np.array(roots, dtype=np.int64),
            np.array(depths, dtype=np.int64),
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Sum of the trees' leaf values for each row of X (n, K)."""
        if not np.all(np.isfinite(X)):
            raise DemixError("mixtures to predict contain NaN or Inf", "pass finite weights")
        out = np.empty(X.shape[0], dtype=np.float64)
        # Transposed: a block reads one feature of consecutive rows from contiguous memory.
        _tree_kernel()(np.ascontiguousarray(X.T, dtype=np.float64), *self.arrays, out, self.BLOCK)
        return out


_KERNEL: Any = None


def _tree_kernel():
    """Compile (once; cached on disk by numba) the parallel fixed-depth tree walk."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def walk(XT, feat, thr, left, right, value, roots, depths, out, block):  # pragma: no cover - compiled
        n = XT.shape[1]
        for b in numba.prange((n + block - 1) // block):
            lo = b * block
            m = min(n, lo + block) - lo
            acc = np.zeros(m)
            nodes = np.empty(m, dtype=np.int64)
            for t in range(roots.shape[0]):
                nodes[:] = roots[t]
                for _ in range(depths[t]):
                    for j in range(m):
                        nd = nodes[j]
                        nodes[j] = left[nd] if XT[feat[nd], lo + j] <= thr[nd] else right[nd]
                for j in range(m):
                    acc[j] += value[nodes[j]]
            out[lo : lo + m] = acc

    _KERNEL = walk
    return walk


def quadratic_features(X: np.ndarray) -> np.ndarray:
    """[w_1..w_K, w_i * w_j for i <= j]: the Ridge features (a Scheffe-style quadratic mixture model)."""
    i, j = np.triu_indices(X.shape[1])
    return np.concatenate([X, X[:, i] * X[:, j]], axis=1)


def _check_xy(X: np.ndarray, Y: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DemixError(f"need a non-empty (n, K) array of mixtures to fit, got shape {X.shape}", "evaluate some mixtures first")
    Ys = {}
    for t, y in Y.items():
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape[0] != X.shape[0]:
            raise DemixError(f"target '{t}' has {y.shape[0]} values for {X.shape[0]} mixtures", "give one score per mixture")
        if not np.all(np.isfinite(y)):
            raise DemixError(f"target '{t}' has non-finite scores", "check the evaluations in the store (NaN or Inf)")
        Ys[t] = y
    return X, Ys


def _fit_one(kind: str, X: np.ndarray, y: np.ndarray, seed: int) -> Any:
    if kind == "lightgbm":
        import lightgbm as lgb

        params = lightgbm_params(X.shape[0], seed)
        n_rounds = params.pop("n_estimators")
        # The lower-level train API: the sklearn wrapper adds nothing but a second copy of the data.
        params["seed"] = params.pop("random_state")
        params["bagging_fraction"] = params.pop("subsample")
        params["feature_fraction"] = params.pop("colsample_bytree")
        return lgb.train(params, lgb.Dataset(X, label=y, params={"verbose": -1, "min_data_in_bin": 1}), num_boost_round=n_rounds)
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=np.logspace(-6, 2, 17)).fit(quadratic_features(X), y)
    return (np.asarray(model.coef_, dtype=float), float(model.intercept_))


def _map_parallel(fn, items: list) -> list:
    """Map over targets in threads: LightGBM and BLAS release the GIL, and each fit uses one
    thread, so targets fit side by side on the machine's cores. Order is kept."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def fit_predictors(
    X: np.ndarray, Y: Mapping[str, np.ndarray], kind: str = "auto", domains: Sequence[str] | None = None, seed: int = 0
) -> Predictors:
    """Fit one regressor per target of ``Y`` ({target: scores, higher is better}) on mixtures ``X`` (n, K)."""
    X, Ys = _check_xy(X, Y)
    concrete = resolve_kind(kind, X.shape[0])
    models = dict(zip(Ys, _map_parallel(lambda y: _fit_one(concrete, X, y, seed), list(Ys.values()))))
    names = list(domains) if domains is not None else [f"w{i}" for i in range(X.shape[1])]
    return Predictors(concrete, names, list(Ys), models, n=X.shape[0])


def cross_validate(
    X: np.ndarray, Y: Mapping[str, np.ndarray], kind: str = "auto", folds: int = 5, seed: int = 0,
    intervals: int = 0, level: float = 0.8,
) -> dict[str, dict[str, Any]]:
    """k-fold cross-validation per target: Spearman rho, MAE and RMSE of the out-of-fold
    predictions, with the n behind them. Returns ``{target: {spearman, mae, rmse, n, folds, kind, predictions}}``;
    spearman is None where it is undefined (constant scores or predictions).

    With ``intervals`` (bootstrap members, >= 2) each fold also fits an :class:`Ensemble` on its
    training rows, and the target's record gains ``interval``: the share of held-out scores
    inside their ``level`` predictive interval (``coverage``), the mean interval width, the
    ensemble mean's out-of-fold RMSE and the n behind them (:func:`interval_report`)."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold

    X, Ys = _check_xy(X, Y)
    n = X.shape[0]
    k = min(folds, n)
    if k < 2:
        return {t: {"spearman": None, "mae": None, "rmse": None, "n": n, "folds": 0, "kind": resolve_kind(kind, n)} for t in Ys}
    splits = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(X))

    def one(y: np.ndarray) -> dict[str, Any]:
        oof = np.empty(n)
        for train, test in splits:
            # The kind is resolved on the fold's size, as the final fit resolves it on n.
            model = _fit_one(resolve_kind(kind, len(train)), X[train], y[train], seed)
            oof[test] = model.predict(X[test]) if not isinstance(model, tuple) else quadratic_features(X[test]) @ model[0] + model[1]
        err = oof - y
        rho = None
        if np.ptp(y) > 0 and np.ptp(oof) > 0:
            rho = float(spearmanr(y, oof).statistic)
        return {
            "spearman": rho,
            "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "n": n,
            "folds": k,
            "kind": resolve_kind(kind, n),
            "predictions": oof.tolist(),  # out-of-fold, row order of X (for predicted-vs-measured plots)
            **({"interval": interval_report(X, y, splits, kind, intervals, level, seed)} if intervals >= 2 else {}),
        }

    return dict(zip(Ys, _map_parallel(one, list(Ys.values()))))


# --------------------------------------------------------------------------- bootstrap ensembles


@dataclass
class Ensemble:
    """A bootstrap ensemble of one predictor kind: ``members`` fits, each on a resample (with
    replacement, n rows) of the training rows, so their spread at a mixture is the sampling
    uncertainty of the fit there (large far from the evaluated mixtures, small near many).

    The predictive interval of a *measured* score adds the noise the members cannot see:
    ``noise_var[t]`` is the out-of-bag mean squared error (each row predicted by the members
    that did not draw it) less the mean ensemble variance at the training rows, floored at 0.
    So the interval's variance is ``noise_var + spread(x)^2``: on average over the training
    rows it equals the out-of-bag error (calibrated), and it widens where the members disagree.
    Intervals are Gaussian (``mean +- z * sd``, z for the two-sided ``level``)."""

    members: list[Predictors]
    noise_var: dict[str, float]
    level: float = 0.8
    noise_cov: np.ndarray | None = None
    """(T, T) in ``targets`` order: the out-of-bag residuals' second moments less the members'
    mean covariance at the training rows (its diagonal, floored at 0, is ``noise_var``), so the
    noise of a weighted sum of targets is ``c @ noise_cov @ c`` (:meth:`combination`). None: an
    ensemble built by hand."""

    @property
    def targets(self) -> list[str]:
        return self.members[0].targets

    def member_predictions(self, weights: np.ndarray, targets: Sequence[str]) -> np.ndarray:
        """(members, n, len(targets)): each member's predictions (what a per-member objective,
        e.g. the pool percentile ranks of ``rank_mean``, is computed from)."""
        return np.stack([m.predict_matrix(weights, targets) for m in self.members])

    def predict(self, weights: np.ndarray, targets: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """``{target: {mean, std, lower, upper}}`` per row of ``weights``: the members' mean, their
        spread (std), and the ``level`` predictive interval of a measured score."""
        from scipy.stats import norm

        names = list(targets if targets is not None else self.targets)
        preds = self.member_predictions(weights, names)
        z = float(norm.ppf(0.5 + self.level / 2))
        out = {}
        for j, t in enumerate(names):
            mean, std = preds[:, :, j].mean(axis=0), preds[:, :, j].std(axis=0, ddof=1)
            half = z * np.sqrt(self.noise_var[t] + std**2)
            out[t] = {"mean": mean, "std": std, "lower": mean - half, "upper": mean + half}
        return out

    def combination(self, weights: np.ndarray, coef: Mapping[str, float]) -> dict[str, np.ndarray]:
        """``{mean, std, lower, upper}`` per row of ``weights`` for the score ``sum_t coef[t] x
        target_t`` (the ``weighted`` objective): each member's combination, their mean and
        spread, and the ``level`` interval of a *measured* combination, whose noise variance is
        ``c @ noise_cov @ c`` (the targets' noises are correlated: one proxy's held-out losses
        move together), floored at 0."""
        from scipy.stats import norm

        names = list(coef)
        c = np.array([float(coef[t]) for t in names])
        per_member = self.member_predictions(weights, names) @ c  # (members, n)
        mean, std = per_member.mean(axis=0), per_member.std(axis=0, ddof=1)
        if self.noise_cov is not None:
            idx = [self.targets.index(t) for t in names]
            noise = max(0.0, float(c @ self.noise_cov[np.ix_(idx, idx)] @ c))
        else:  # independent noises: the only assumption without the covariance
            noise = float(sum(ci**2 * self.noise_var[t] for ci, t in zip(c, names)))
        half = float(norm.ppf(0.5 + self.level / 2)) * np.sqrt(noise + std**2)
        return {"mean": mean, "std": std, "lower": mean - half, "upper": mean + half}


def fit_ensemble(
    X: np.ndarray, Y: Mapping[str, np.ndarray], kind: str = "auto", members: int = 16,
    domains: Sequence[str] | None = None, seed: int = 0, level: float = 0.8,
) -> Ensemble:
    """A bootstrap :class:`Ensemble` of ``members`` fits of ``kind`` (resolved on n, as the single
    fit is: Ridge below :data:`AUTO_MIN_LIGHTGBM` rows) for every target of ``Y``."""
    if members < 2:
        raise DemixError(f"a bootstrap ensemble needs at least 2 members, got {members}", "set search.predictor_intervals >= 2")
    X, Ys = _check_xy(X, Y)
    n = X.shape[0]
    concrete = resolve_kind(kind, n)
    rng = np.random.default_rng([seed, 7])
    draws = [rng.integers(0, n, n) for _ in range(members)]
    fits = [fit_predictors(X[d], {t: y[d] for t, y in Ys.items()}, concrete, domains, seed + b)
            for b, d in enumerate(draws)]
    for f in fits:
        f.n = n
    preds = np.stack([f.predict_matrix(X, list(Ys)) for f in fits])  # (members, n, T)
    names = list(Ys)
    # Out-of-bag prediction of every row: the mean of the members that did not draw it.
    oob, cnt = np.zeros((n, len(names))), np.zeros(n)
    for b, d in enumerate(draws):
        out = np.ones(n, dtype=bool)
        out[d] = False
        oob[out] += preds[b, out]
        cnt[out] += 1
    seen = cnt > 0  # a row every member drew (p ~ (1 - e^-1)^members) has no out-of-bag prediction
    Yn = np.stack([Ys[t] for t in names], axis=1)
    # Second moments of the targets' members: mean over training rows of the members' covariance.
    centred = preds - preds.mean(axis=0, keepdims=True)
    spread = np.einsum("bni,bnj->ij", centred, centred) / ((len(fits) - 1) * n)
    if seen.any():
        resid = Yn[seen] - oob[seen] / cnt[seen, None]
        cov = resid.T @ resid / int(seen.sum()) - spread
    else:
        cov = spread.copy()
    noise = {t: float(max(0.0, cov[j, j])) if seen.any() else float(spread[j, j]) for j, t in enumerate(names)}
    return Ensemble(fits, noise, level, cov)


def interval_report(
    X: np.ndarray, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]], kind: str, members: int,
    level: float, seed: int = 0,
) -> dict[str, Any]:
    """Out-of-fold calibration of :class:`Ensemble` intervals for one target: each split's
    ensemble is fitted on its training rows and predicts its held-out rows. ``coverage`` is the
    share of held-out scores inside their ``level`` interval (binomial standard error
    ``sqrt(level (1 - level) / n)`` when calibrated), ``width`` the mean interval width,
    ``rmse`` the ensemble mean's out-of-fold RMSE."""
    n = X.shape[0]
    inside = np.zeros(n, dtype=bool)
    width, mean = np.zeros(n), np.zeros(n)
    for i, (train, test) in enumerate(splits):
        ens = fit_ensemble(X[train], {"t": y[train]}, kind, members, seed=seed + 1000 * i, level=level)
        p = ens.predict(X[test])["t"]
        inside[test] = (y[test] >= p["lower"]) & (y[test] <= p["upper"])
        width[test] = p["upper"] - p["lower"]
        mean[test] = p["mean"]
    return {"level": level, "coverage": float(inside.mean()), "width": float(width.mean()),
            "rmse": float(np.sqrt(np.mean((mean - y) ** 2))), "members": members, "n": n}
