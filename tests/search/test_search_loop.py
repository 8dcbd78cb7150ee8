"""The search loop on a synthetic scorer: rounds, files, resume after a real SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from demix.errors import DemixError
from demix.mixtures import mixture_key
from demix.rundir import RunDir
from demix.search import LiveSearchDisplay, run_search
from demix.store import Store
from search_fixtures import DOMAINS, TOKENS, distance, make_config, synthetic_result


class CountingScorer:
    def __init__(self, noise=0.0):
        self.calls = []
        self.rng = np.random.default_rng(0)
        self.noise = noise

    def __call__(self, m):
        self.calls.append(mixture_key(m))
        return synthetic_result(m, self.noise, self.rng)


def test_search_finds_the_optimum_writes_its_files_and_resumes_without_rescoring(tmp_path):
    run = RunDir(tmp_path / "run")
    config = make_config(run.root, rounds=[24, 12, 6])
    scorer = CountingScorer(noise=0.01)
    result = run_search(config, run, scorer, TOKENS)
    assert len(scorer.calls) == 42 == len(set(scorer.calls)) == result.evaluations == result.evaluated_now
    best = json.loads(run.best_mixture.read_text())
    # The scorer is a function of the component weights: the search finds its optimum there, and
    # beats the component weights standing for the natural data mixture (0.2, 0.4, 0.4 at share 0.5).
    natural = best["baselines"]["natural"]["component_weights"]
    assert natural == pytest.approx({"general": 0.2, "math": 0.4, "code": 0.4})
    assert distance(result.component_weights) < 0.2 < distance(natural) + 0.2
    assert distance(result.component_weights) < distance(natural)

    assert sum(best["component_weights"].values()) == pytest.approx(1.0)
    assert best["component_weights"] == result.component_weights and best["data_mixture"] == result.data_mixture
    # The data mixture of the standard recipe (general share 0.5): data = a @ M.
    a = best["component_weights"]
    assert best["data_mixture"] == pytest.approx(
        {"general": a["general"] + 0.5 * (1 - a["general"]), "math": 0.5 * a["math"], "code": 0.5 * a["code"]}, abs=1e-12)
    assert best["mapping"]["region"] == "data mixtures with general >= 0.5"
    assert best["target_tokens"] == 1000
    for d in DOMAINS:  # the budget is the data mixture's, what a model trained on it sees
        assert best["tokens"][d] == round(best["data_mixture"][d] * 1000)
        assert best["epochs"][d] == pytest.approx(best["data_mixture"][d] * 1000 / TOKENS[d])
    pred = best["predicted"]
    assert set(pred["capabilities"]) == {"general", "math", "code"}
    assert pred["benchmarks"]["math_bpb"]["higher_is_better"] is False
    # Benchmarks are reported in their raw unit (a loss near 1 here), with the CV error and its n.
    assert 0.9 < pred["benchmarks"]["math_bpb"]["value"] < 1.3
    assert pred["capabilities"]["math"]["cv_n"] == 42
    with Store(run.store_url) as store:
        math_scores = np.array([e.capabilities["math"] for e in store.evaluations_done()])
    # Out of fold, the predictor ranks well and its typical error is far below the scores' spread.
    assert pred["capabilities"]["math"]["cv_spearman"] > 0.7
    assert pred["capabilities"]["math"]["cv_mae"] < 0.5 * np.abs(math_scores - np.median(math_scores)).mean()
    assert best["top_k"]["k"] == 100 and best["top_k"]["pool_size"] == 4000
    assert set(best["baselines"]) == {"natural", "uniform"}
    assert best["predicted"]["capabilities"]["math"]["value"] > best["baselines"]["natural"]["predicted"]["capabilities"]["math"]["value"]

    for r in range(3):
        rd = run.round_dir(r)
        for name in ("planned.json", "cv.json", "pool.npz", "pareto.csv", "selection.json"):
            assert (rd / name).is_file(), rd / name
        assert (rd / "predictors" / "capabilities" / "predictors.json").is_file()
    pool = np.load(run.round_dir(0) / "pool.npz")
    assert pool["weights"].shape == (4000, 3) and pool["capability_scores"].shape == (4000, 3)
    cv = json.loads((run.round_dir(2) / "cv.json").read_text())
    assert cv["n"] == 42 and cv["capabilities"]["general"]["spearman"] > 0.8
    # Later rounds draw from the predicted top region: closer to the optimum than round 0.
    plans = [json.loads((run.round_dir(r) / "planned.json").read_text())["mixtures"] for r in range(3)]
    spread = [np.mean([distance(m) for m in p]) for p in plans]
    assert spread[1] < spread[0] and spread[2] < spread[0]

    again = CountingScorer()
    result2 = run_search(config, run, again, TOKENS)
    assert again.calls == [] and result2.evaluated_now == 0
    assert result2.component_weights == pytest.approx(result.component_weights)
    assert result2.data_mixture == pytest.approx(result.data_mixture)


def test_killed_search_resumes_without_losing_or_repeating_evaluations(tmp_path):
    run_dir, calls = tmp_path / "run", tmp_path / "calls.txt"
    worker = [sys.executable, str(Path(__file__).parents[1] / "_search_worker.py"), str(run_dir), str(calls)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*worker, "0.3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and (not calls.exists() or len(calls.read_text().split()) < 3):
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = calls.read_text().split()
    assert 3 <= len(before) < 12

    store = Store(f"sqlite:///{run_dir / 'store.sqlite'}")
    stored_before = store.done_keys()
    # Every finished call is stored, except possibly the one killed between scoring and commit.
    assert len(stored_before) >= len(before) - 1
    store.close()

    done = subprocess.run([*worker, "0"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after = calls.read_text().split()
    counts = Counter(after)
    planned = [k for r in (0, 1) for k in json.loads((run_dir / "search" / f"round_{r}" / "planned.json").read_text())["keys"]]
    assert len(planned) == 12 and len(set(planned)) == 12
    store = Store(f"sqlite:///{run_dir / 'store.sqlite'}")
    assert store.done_keys() == set(planned)
    assert store.count(status="pending") == 0
    store.close()
    # The resumed run never scored a mixture that was already stored...
    assert all(counts[k] == 1 for k in stored_before)
    # ...and scored each missing one exactly once (one repeat only if killed mid-commit).
    repeats = [k for k, c in counts.items() if c > 1]
    assert len(repeats) <= 1 and set(after) == set(planned)
    assert (run_dir / "best_mixture.json").is_file()


def test_bad_objective_fails_before_any_evaluation(tmp_path):
    scorer = CountingScorer()
    for search, match in [
        ({"constraints": ["reasoning >= natural"]}, "unknown capability 'reasoning'"),
        ({"constraints": ["weight.web >= 0.2"]}, "unknown domain 'web'"),
        ({"constraints": ["component.web >= 0.2"]}, "unknown domain 'web'"),
        ({"capability_weights": {"reasoning": 1.0}}, "unknown capability"),
        ({"bounds": {"lower": {"general": 0.7, "math": 0.5}}}, "infeasible bounds"),
        ({"bounds": {"upper": {"general": 0.45}}}, "search.bounds.upper.general: a data share of 'general' <= 0.45 is "
                                                   "not reachable: the proxies stand for data mixtures with general >= 0.5"),
        ({"bounds": {"lower": {"math": 0.3, "code": 0.3}}}, "no reachable data mixture meets"),
    ]:
        config = make_config(tmp_path / "run", rounds=[4], **search)
        with pytest.raises(DemixError, match=match):
            run_search(config, RunDir(tmp_path / "run"), scorer, TOKENS)
    assert scorer.calls == []


def test_constraints_and_bounds_shape_the_choice(tmp_path):
    """Bounds and ``weight.`` constraints are on the data mixture (general share 0.5: data[general]
    = 0.5 + 0.5 a_g, data[d] = 0.5 a_d), ``component.`` constraints on the component weights."""
    run = RunDir(tmp_path / "run")
    config = make_config(
        run.root, rounds=[30], constraints=["weight.code >= 0.2", "component.math <= 0.25"],
        bounds={"upper": {"general": 0.7}},
    )
    # The rich progress bar and live table run too.
    with LiveSearchDisplay(DOMAINS) as display:
        result = run_search(config, run, CountingScorer(), TOKENS, on_event=display)
    assert result.data_mixture["code"] >= 0.2 - 1e-9
    assert result.data_mixture["general"] <= 0.7 + 1e-9
    # Read as data shares they move the choice far from the component optimum (code 0.2, general 0.5):
    # data code >= 0.2 is component code >= 0.4, data general <= 0.7 is component general <= 0.4.
    assert result.component_weights["code"] >= 0.4 - 1e-9 and result.component_weights["general"] <= 0.4 + 1e-9
    assert result.component_weights["math"] <= 0.25 + 1e-9
    planned = json.loads((run.round_dir(0) / "planned.json").read_text())["mixtures"]
    assert all(m["general"] <= 0.4 + 1e-12 for m in planned) and max(m["general"] for m in planned) > 0.3


def test_unknown_benchmark_direction_is_an_error(tmp_path):
    from types import SimpleNamespace

    def scorer(m):
        r = synthetic_result(m)
        return SimpleNamespace(benchmarks=r.benchmarks, capabilities=r.capabilities)

    config = make_config(tmp_path / "run", rounds=[4])
    with pytest.raises(DemixError, match="direction of benchmark"):
        run_search(config, RunDir(tmp_path / "run"), scorer, TOKENS)


def test_search_cli_needs_prepared_data(tmp_path):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(make_config(tmp_path / "run").model_dump(mode="json")))
    proc = subprocess.run([sys.executable, "-m", "demix", "search", str(cfg), "-q"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "run `demix prepare` first" in proc.stderr


def test_evaluations_of_retrained_components_are_evaluated_again(tmp_path):
    """A resumed search never fits proxies merged from a component that changed since: the ones
    that used it are evaluated again on the new weights (tests/search/test_evidence.py: only those)."""
    run = RunDir(tmp_path / "run")
    config = make_config(run.root, rounds=[6])
    for d in [run.base] + [run.component(x) for x in DOMAINS]:
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"weights")
    scorer = CountingScorer()
    run_search(config, run, scorer, TOKENS)
    with Store(run.store_url) as store:
        stored = {e.provenance["components"] for e in store.evaluations_done()}
    assert len(stored) == 1 and None not in stored

    # Same components: the resumed search reuses everything.
    run_search(config, run, scorer, TOKENS)
    assert len(scorer.calls) == 6

    # A retrained component (new weights file): the stored proxies that used it are stale.
    (run.component(DOMAINS[1]) / "model.safetensors").write_bytes(b"retrained weights")
    with Store(run.store_url) as store:
        used = [e.mixture_key for e in store.evaluations_done() if round(e.weights[DOMAINS[1]], 6) != 0]
    assert used
    run_search(config, run, scorer, TOKENS)
    assert sorted(scorer.calls[6:]) == sorted(used)
    with Store(run.store_url) as store:
        assert store.count() == 6  # replaced in place, not duplicated


def test_on_event_hears_each_round_evaluation_and_ranking(tmp_path):
    from demix.search import SearchEvent

    run = RunDir(tmp_path / "run")
    config = make_config(run.root, rounds=[6, 3])
    events: list[SearchEvent] = []
    run_search(config, run, CountingScorer(), TOKENS, on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds == ["round_started", *["proxy_evaluated"] * 6, "round_ranked", "round_started",
                     *["proxy_evaluated"] * 3, "round_ranked"]
    assert (events[0].round, events[0].planned, events[0].done) == (0, 6, 0)
    ranked = events[7]
    assert ranked.evaluations == 6 and ranked.ranking.weights.shape == (4000, 3)
    assert ranked.ranking.mean == pytest.approx(list(json.loads((run.round_dir(0) / "selection.json").read_text())["weights"].values()))

    # Resumed: every planned mixture is done, nothing is evaluated.
    events.clear()
    run_search(config, run, CountingScorer(), TOKENS, on_event=events.append)
    assert [(e.kind, e.planned, e.done) for e in events if e.kind == "round_started"] == [("round_started", 6, 6), ("round_started", 3, 3)]
    assert "proxy_evaluated" not in [e.kind for e in events]
