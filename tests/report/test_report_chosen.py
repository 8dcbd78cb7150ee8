"""The report's check of the chosen mixture: predicted, ensemble interval and measured side by
side (from best_mixture.json's ``intervals`` and ``measured``), and the predictor's ranking
against reference models (fidelity/scores.json, written by its real writer). A real two-round
search with the synthetic scorer; no models."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from demix.config import save_config
from demix.mixtures import mixture_key
from demix.rundir import RunDir, read_json
from demix.search import run_search
from tests.search_fixtures import DOMAINS, TOKENS, make_config, synthetic_result


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_chosen")
    config = make_config(root, rounds=(16, 8), pool_size=3000, top_k=60, objective="weighted", predictor_intervals=6,
                         measure_chosen=True)
    run = RunDir(root)
    save_config(config, run.config)
    rng = np.random.default_rng(0)
    run_search(config, run, lambda m: synthetic_result(m, noise=0.01, rng=rng), TOKENS)
    return config, run


def _md_row(md: str, label: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_report_shows_predicted_interval_and_measured(checked):
    from demix.report import write_report

    config, run = checked
    md = write_report(run).markdown.read_text()
    best = read_json(run.best_mixture)
    iv, m = best["intervals"], best["measured"]
    assert "| score | predicted | ensemble mean | 80% interval | measured | inside |" in md
    for c in DOMAINS:
        i = iv["capabilities"][c]
        inside = "yes" if m["inside_interval"][c] else "no"
        assert _md_row(md, c) == [f"{best['predicted']['capabilities'][c]['value']:.4f}", f"{i['mean']:.4f}",
                                  f"[{i['lower']:.4f}, {i['upper']:.4f}]", f"{m['capabilities'][c]:.4f}", inside]
    o = iv["objective"]
    assert _md_row(md, "objective (weighted)") == [
        f"{m['predicted_objective']:.4f}", f"{o['mean']:.4f}", f"[{o['lower']:.4f}, {o['upper']:.4f}]",
        f"{m['objective']:.4f}", "yes" if m["inside_interval"]["objective"] else "no"]
    assert (f"objective {m['objective']:.4f} against {m['predicted_objective']:.4f} predicted (predicted - measured "
            f"{m['predicted_objective'] - m['objective']:+.4f}") in md
    assert "bootstrap ensemble of 6 ridge fits on 24 evaluations" in md
    assert "reference models" not in md  # no fidelity stage in this run
    assert "<td>objective (weighted)</td>" in (run.report / "report.html").read_text()


def test_report_without_a_measurement_says_how_to_get_one(tmp_path):
    from demix.report import write_report

    run = RunDir(tmp_path / "run")
    config = make_config(run.root, rounds=(12,), pool_size=2000, top_k=40)
    save_config(config, run.config)
    run_search(config, run, synthetic_result, TOKENS)
    md = write_report(run).markdown.read_text()
    assert "| score | predicted |" not in md  # neither intervals nor a measurement: no table
    assert "was not measured (search.measure_chosen: true evaluates it once)" in md


def _write_reference_scores(run: RunDir, mixtures: list[dict[str, float]], noise: float, seed: int) -> None:
    """fidelity/scores.json as the fidelity stage writes it: reference models' scores per mixture."""
    from demix.fidelity.files import FidelityScores, Scores

    rng = np.random.default_rng(seed)
    keys = [mixture_key(m) for m in mixtures]
    scores = {}
    for k, m in zip(keys, mixtures):
        r = synthetic_result(m, noise, rng)
        scores[k] = {"reference": Scores(dict(r.benchmarks), dict(r.capabilities))}
    FidelityScores(higher_is_better=dict(synthetic_result(mixtures[0]).higher_is_better), ratio_scale_capabilities=[],
                   component_weights=dict(zip(keys, mixtures)), data_mixtures=dict(zip(keys, mixtures)),
                   scores=scores).write(run.fidelity_files.scores)


def test_report_says_whether_the_ranking_agrees_with_the_references(checked, tmp_path):
    from demix.report import load_run, write_report
    from demix.report.chosen import reference_agreement

    config, src = checked
    run = RunDir(tmp_path / "copy")
    shutil.copytree(src.root, run.root)
    run.fidelity_files.root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    mixtures = [dict(zip(DOMAINS, map(float, w))) for w in rng.dirichlet(np.ones(3), 8)]
    # References whose models measure what the (smooth, learnable) synthetic scores say: they agree.
    _write_reference_scores(run, mixtures, 0.0, 0)
    ag = reference_agreement(load_run(run))
    assert ag is not None and ag.n == 8 and ag.spearman is not None and ag.spearman > 0.8
    # The same rho from first principles: predicted objective (mean capability, the last round's
    # fit) against the references' measured mean capability.
    from scipy.stats import spearmanr

    from demix.predictors import Predictors

    fit = Predictors.load(run.round_files(1).predictors / "capabilities")
    A = np.array([[m[d] for d in fit.domains] for m in mixtures])
    pred = fit.predict_matrix(A, fit.targets).mean(axis=1)
    meas = [np.mean(list(synthetic_result(m).capabilities.values())) for m in mixtures]
    assert ag.spearman == pytest.approx(float(spearmanr(pred, meas).statistic), abs=1e-12)
    md = write_report(run).markdown.read_text()
    assert (f"Against the reference models (n = 8): the last round's predictors rank the references' mixtures by the "
            f"weighted objective with Spearman rho {ag.spearman:.2f}") in md
    assert "so the ranking agrees with the references'" in md
    # References whose models measure the opposite of the synthetic scores: a negative rho, said so.
    from demix.fidelity.files import FidelityScores, Scores

    fs = FidelityScores.read(run.fidelity_files.scores)
    flipped = {k: {"reference": Scores(s["reference"].benchmarks, {c: -v for c, v in s["reference"].capabilities.items()})}
               for k, s in fs.scores.items()}
    FidelityScores(fs.higher_is_better, [], fs.component_weights, fs.data_mixtures, flipped).write(run.fidelity_files.scores)
    ag = reference_agreement(load_run(run))
    assert ag is not None and ag.spearman is not None and ag.spearman < -0.8
    assert "does not agree with the references'" in write_report(run).markdown.read_text()
    # Two references: too few for a rho.
    _write_reference_scores(run, mixtures[:2], 0.0, 0)
    assert "too few to say" in write_report(run).markdown.read_text()


def test_the_reference_check_reads_a_fit_with_one_kind_per_target(checked, tmp_path):
    """After a domain is added, targets are fitted with different kinds (a per-target
    predictors.json): the report's reference check reads that fit, not only a one-kind one."""
    from scipy.stats import spearmanr

    from demix.predictors import Predictors, fit_predictors
    from demix.report import load_run
    from demix.report.chosen import reference_agreement
    from demix.search.fitting import TargetPredictors

    config, src = checked
    run = RunDir(tmp_path / "copy")
    shutil.copytree(src.root, run.root)
    run.fidelity_files.root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    mixtures = [dict(zip(DOMAINS, map(float, w))) for w in rng.dirichlet(np.ones(3), 8)]
    _write_reference_scores(run, mixtures, 0.0, 0)
    last = run.round_files(1).predictors / "capabilities"
    targets = Predictors.load(last).targets
    X = rng.dirichlet(np.ones(3), 40)
    y = {t: np.array([synthetic_result(dict(zip(DOMAINS, map(float, w)))).capabilities[t] for w in X]) for t in targets}
    parts = {"ridge": fit_predictors(X, {t: y[t] for t in targets[:1]}, "ridge", list(DOMAINS)),
             "lightgbm": fit_predictors(X, {t: y[t] for t in targets[1:]}, "lightgbm", list(DOMAINS))}
    shutil.rmtree(last)
    per_target = TargetPredictors(parts, list(targets), list(DOMAINS), len(X))
    per_target.save(last)
    assert read_json(last / "predictors.json")["kind"] == "per_target"
    ag = reference_agreement(load_run(run))
    assert ag is not None and ag.n == 8 and ag.spearman is not None
    A = np.array([[m[d] for d in DOMAINS] for m in mixtures])
    pred = per_target.predict_matrix(A, targets).mean(axis=1)
    meas = [np.mean(list(synthetic_result(m).capabilities.values())) for m in mixtures]
    assert ag.spearman == pytest.approx(float(spearmanr(pred, meas).statistic), abs=1e-12)
