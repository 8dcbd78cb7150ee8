"""The chosen mixture's predicted intervals and measured proxy in best_mixture.json
(``intervals``, ``measured``): well-formed, equal to the store and the ensemble they come from,
read back from files without them, refused when garbled; the ensemble's noise of a weighted sum
of correlated targets. Real Ridge/LightGBM fits, a real store, the synthetic scorer of the other
search tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from demix.errors import DemixError
from demix.mixtures import mixture_key
from demix.predictors import fit_ensemble
from demix.rundir import RunDir
from demix.search import run_search
from demix.search.best import search_is_complete
from demix.search.files import BestMixture
from demix.store import Store
from search_fixtures import DOMAINS, TOKENS, make_config, synthetic_result


class Scorer:
    def __init__(self, seed: int = 0):
        self.calls: list[str] = []
        self.rng = np.random.default_rng(seed)

    def __call__(self, m):
        self.calls.append(mixture_key(m))
        return synthetic_result(m, 0.01, self.rng)


def _search(root, **search):
    run = RunDir(root)
    config = make_config(run.root, rounds=(12, 6), **search)
    scorer = Scorer()
    return config, run, scorer, run_search(config, run, scorer, TOKENS)


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    return _search(tmp_path_factory.mktemp("chosen") / "run", objective="weighted", predictor_intervals=6,
                   measure_chosen=True)


def test_intervals_and_measurement_in_best_mixture_json(weighted):
    config, run, scorer, result = weighted
    record = json.loads(run.best_mixture.read_text())
    iv, m = record["intervals"], record["measured"]
    assert iv["level"] == 0.8 and iv["members"] == 6 and iv["n"] == 18 and iv["kind"] == "ridge"
    assert set(iv["capabilities"]) == set(DOMAINS)
    for c, i in [*iv["capabilities"].items(), ("objective", iv["objective"])]:
        assert i["lower"] < i["mean"] < i["upper"] and i["std"] >= 0, c
    assert iv["objective"]["kind"] == "weighted" and iv["objective"]["includes_noise"] is True
    # The objective's ensemble mean is the weighted sum of the capabilities' (equal weights, linear).
    caps_mean = np.mean([iv["capabilities"][c]["mean"] for c in DOMAINS])
    assert iv["objective"]["mean"] == pytest.approx(caps_mean, abs=1e-12)
    # The intervals are the ensemble's, refitted the same way on the evaluations of the rounds.
    with Store(run.store_url) as store:
        rows = store.evaluations_done()
        chosen = store.get(result.component_weights)
    planned = [e for e in rows if e.round is not None]
    X = np.array([[e.weights[d] for d in DOMAINS] for e in planned])
    # The ensemble is fitted in plan order; rows come back in insertion order, which is plan order here.
    ens = fit_ensemble(X, {c: np.array([e.capabilities[c] for e in planned]) for c in DOMAINS}, "auto", 6, DOMAINS, 0, 0.8)
    a = np.array([[result.component_weights[d] for d in DOMAINS]])
    p = ens.predict(a)
    for c in DOMAINS:
        assert iv["capabilities"][c]["lower"] == pytest.approx(float(p[c]["lower"][0]), rel=1e-9)
    # measured: the chosen mixture's proxy, evaluated once (round null) and stored like any proxy.
    assert m["source"] == "search.measure_chosen" and m["mixture_key"] == record["mixture_key"]
    assert chosen is not None and chosen.round is None and chosen.provenance["source"] == "demix search"
    assert m["capabilities"] == chosen.capabilities and m["benchmarks"] == chosen.benchmarks
    assert m["objective"] == pytest.approx(np.mean(list(chosen.capabilities.values())), abs=1e-12)
    predicted = np.mean([record["predicted"]["capabilities"][c]["value"] for c in DOMAINS])
    assert m["predicted_objective"] == pytest.approx(predicted, abs=1e-12)
    assert set(m["inside_interval"]) == {*DOMAINS, "objective"}
    for c in DOMAINS:
        i = iv["capabilities"][c]
        assert m["inside_interval"][c] == (i["lower"] <= m["capabilities"][c] <= i["upper"])
    assert len(scorer.calls) == 19 == len(rows)  # 18 planned + the chosen mixture
    # The typed record gives the same back, and the search is complete for this config.
    best = BestMixture.read(run.best_mixture)
    assert best.to_dict() == record and best.measured is not None and best.intervals is not None
    assert search_is_complete(config, run)


def test_a_resumed_search_evaluates_nothing_and_writes_the_same(weighted):
    config, run, _, result = weighted
    before = run.best_mixture.read_text()
    again = Scorer()
    run_search(config, run, again, TOKENS)
    assert again.calls == [] and run.best_mixture.read_text() == before


def test_rank_mean_intervals_are_the_members_spread(tmp_path):
    config, run, scorer, result = _search(tmp_path / "run", predictor_intervals=4, measure_chosen=True)
    best = BestMixture.read(run.best_mixture)
    assert best.intervals is not None and best.measured is not None
    o = best.intervals.objective
    assert best.intervals.objective_kind == "rank_mean" and not best.intervals.objective_includes_noise
    assert 0 < o.mean <= 1 and o.lower <= o.mean <= o.upper
    # Symmetric, z x std for the 80% level.
    assert o.upper - o.mean == pytest.approx(1.2815515655 * o.std, rel=1e-6)
    # Measured and predicted rank_mean: percentile ranks among the last pool's predictions.
    assert 0 < best.measured.objective <= 1 and 0 < best.measured.predicted_objective <= 1


def test_without_intervals_or_measurement_the_file_keeps_its_layout(tmp_path):
    config, run, scorer, result = _search(tmp_path / "run")
    record = json.loads(run.best_mixture.read_text())
    assert "intervals" not in record and "measured" not in record
    assert len(scorer.calls) == 18
    # Intervals asked for later: the file is no longer complete for that config.
    assert search_is_complete(config, run)
    assert not search_is_complete(make_config(run.root, rounds=(12, 6), measure_chosen=True), run)


def test_a_file_without_the_new_fields_is_read_and_garbled_ones_are_refused(weighted, tmp_path):
    _, run, _, _ = weighted
    record = json.loads(run.best_mixture.read_text())
    old = {k: v for k, v in record.items() if k not in ("intervals", "measured")}
    path = tmp_path / "best_mixture.json"
    path.write_text(json.dumps(old))
    best = BestMixture.read(path)
    assert best.intervals is None and best.measured is None and best.to_dict() == old
    bad = json.loads(json.dumps(record))
    c = DOMAINS[0]
    bad["intervals"]["capabilities"][c]["lower"], bad["intervals"]["capabilities"][c]["upper"] = 1.0, 0.0
    path.write_text(json.dumps(bad))
    with pytest.raises(DemixError, match="best_mixture.json.*lower end"):
        BestMixture.read(path)
    bad = json.loads(json.dumps(record))
    bad["measured"]["objective"] = "high"
    path.write_text(json.dumps(bad))
    with pytest.raises(DemixError, match="measured.objective"):
        BestMixture.read(path)


def test_noise_of_a_weighted_sum_counts_the_targets_correlation():
    # Two targets sharing one noise draw (held-out losses of one proxy move together): the sum's
    # noise variance is 4 sigma^2, twice what independent noises would give.
    rng = np.random.default_rng(0)
    n, sigma = 400, 0.05
    X = rng.dirichlet(np.ones(3), n)
    e = rng.normal(0, sigma, n)
    Y = {"a": 1 - (X[:, 0] - 0.4) ** 2 + e, "b": 1 - (X[:, 1] - 0.3) ** 2 + e}
    ens = fit_ensemble(X, Y, "ridge", members=16, seed=0)
    assert ens.noise_cov is not None
    c = np.array([1.0, 1.0])
    both = float(c @ ens.noise_cov @ c)
    assert both == pytest.approx(4 * sigma**2, rel=0.25)
    assert both == pytest.approx(2 * (ens.noise_var["a"] + ens.noise_var["b"]), rel=0.1)
    # The interval of the sum is that wide (plus the members' small spread).
    comb = ens.combination(X[:5], {"a": 1.0, "b": 1.0})
    half = (comb["upper"] - comb["mean"]) / 1.2815515655
    assert np.all(half >= np.sqrt(both) - 1e-12) and np.all(half <= np.sqrt(both + comb["std"] ** 2) + 1e-9)
    # Its diagonal is noise_var, as before the covariance was kept.
    assert np.diag(ens.noise_cov) == pytest.approx([ens.noise_var["a"], ens.noise_var["b"]])
