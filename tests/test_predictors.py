"""Predictors: recover a known function, cross-validation report, persistence, small-n settings."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from demix.errors import DemixError
from demix.predictors import Predictors, cross_validate, fit_predictors, lightgbm_params, resolve_kind


def synthetic(X):
    """A smooth, non-linear score of a 4-domain mixture (an optimum inside the simplex)."""
    return 1.5 * np.sqrt(X[:, 1]) + X[:, 0] - 2 * (X[:, 2] - 0.2) ** 2 + 0.3 * X[:, 3] * X[:, 0]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(4), size=400)
    y = synthetic(X) + rng.normal(0, 0.01, size=400)
    return X[:200], y[:200], X[200:], synthetic(X[200:])


@pytest.mark.parametrize("kind", ["lightgbm", "ridge"])
def test_recovers_known_function_on_held_out_points(data, kind):
    X, y, Xt, yt = data
    pred = fit_predictors(X, {"score": y}, kind).predict(Xt)["score"]
    assert spearmanr(pred, yt).statistic >= 0.9


def test_auto_kind_and_small_sample_settings():
    assert resolve_kind("auto", 31) == "ridge" and resolve_kind("auto", 32) == "lightgbm"
    assert lightgbm_params(40)["min_child_samples"] == 5
    assert lightgbm_params(1000)["min_child_samples"] == 20
    # With 40 rows LightGBM's default (20 per leaf) would allow at most one split; ours learns.
    rng = np.random.default_rng(1)
    X = rng.dirichlet(np.ones(3), size=40)
    y = X[:, 0] ** 2 + X[:, 1]
    pred = fit_predictors(X, {"t": y}, "lightgbm").predict(X)["t"]
    assert len(np.unique(np.round(pred, 9))) > 8
    assert spearmanr(pred, y).statistic > 0.9
    with pytest.raises(DemixError, match="unknown predictor"):
        resolve_kind("xgboost", 10)


def test_cross_validation_reports_rho_error_and_n(data):
    X, y, _, _ = data
    rep = cross_validate(X, {"good": y, "flat": np.ones(len(y))}, "lightgbm", folds=4, seed=0)
    assert rep["good"]["n"] == 200 and rep["good"]["folds"] == 4 and rep["good"]["kind"] == "lightgbm"
    assert rep["good"]["spearman"] > 0.9
    assert 0 < rep["good"]["mae"] <= rep["good"]["rmse"] < 0.2
    assert rep["flat"]["spearman"] is None  # undefined, not a fake number
    assert rep["flat"]["rmse"] == pytest.approx(0.0, abs=1e-9)
    noise = np.random.default_rng(3).normal(size=len(y))
    assert abs(cross_validate(X, {"noise": noise}, "ridge", folds=4)["noise"]["spearman"]) < 0.3


@pytest.mark.parametrize("kind", ["lightgbm", "ridge"])
def test_save_and_load_give_identical_predictions(tmp_path, data, kind):
    X, y, Xt, _ = data
    fit = fit_predictors(X, {"a": y, "b": -y}, kind, domains=["g", "m", "c", "w"])
    fit.save(tmp_path / "fit")
    back = Predictors.load(tmp_path / "fit")
    assert back.kind == kind and back.targets == ["a", "b"] and back.domains == ["g", "m", "c", "w"] and back.n == 200
    for t in ("a", "b"):
        np.testing.assert_allclose(back.predict(Xt)[t], fit.predict(Xt)[t], rtol=1e-12)
    assert not list(tmp_path.rglob("*.pkl"))


def test_bad_inputs(data, tmp_path):
    X, y, _, _ = data
    with pytest.raises(DemixError, match="non-finite"):
        fit_predictors(X, {"t": np.where(np.arange(len(y)) == 3, np.nan, y)})
    with pytest.raises(DemixError, match="values for 200 mixtures"):
        fit_predictors(X, {"t": y[:10]})
    fit = fit_predictors(X, {"t": y}, "ridge")
    with pytest.raises(DemixError, match="columns"):
        fit.predict(np.ones((3, 2)) / 2)
    (tmp_path / "predictors.json").write_text("{not json")
    with pytest.raises(DemixError, match="cannot read the predictor fit"):
        Predictors.load(tmp_path)


def test_compiled_trees_equal_lightgbm_exactly(data):
    X, y, Xt, _ = data
    fit = fit_predictors(X, {"t": y, "u": X[:, 0] * 3}, "lightgbm")
    # Rows with exact zeros and points on the training grid included.
    P = np.concatenate([Xt, X[:50], np.eye(4), np.full((1, 4), 0.25)])
    for t in ("t", "u"):
        np.testing.assert_array_equal(fit.predict(P)[t], fit.models[t].predict(P))
    with pytest.raises(DemixError, match="NaN or Inf"):
        fit.predict(np.full((2, 4), np.nan))
