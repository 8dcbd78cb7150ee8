"""Evidence reuse on a miniature run (synthetic scorer, checkpoint files on disk): adding a domain
keeps every stored evaluation and evaluates none again, removing one keeps exactly the rows with
zero weight on it, retraining a component marks exactly the rows that used it, and a kill during
any of this loses nothing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from demix.config import config_from_dict
from demix.mixtures import mixture_key
from demix.rundir import RunDir
from demix.search import run_search
from demix.search.evidence import REMOVED_DOMAIN, STALE_COMPONENT, VALID, Evidence
from demix.store import Store

TOKENS4 = {"general": 600, "math": 200, "code": 200, "web": 300}


def scores(m):
    """Smooth capabilities of the component weights; the 4th domain matters when it is there."""
    g, ma, c, w = (float(m.get(d, 0.0)) for d in ("general", "math", "code", "web"))
    general = 1 - 4 * (g + 0.5 * w - 0.6) ** 2 - 3 * (c + 0.3 * w - 0.25) ** 2
    math = 1 - 6 * (ma - 0.3) ** 2
    return SimpleNamespace(
        benchmarks={"general_bpb": 2 - general, "math_bpb": 2 - math},
        capabilities={"general": general, "math": math},
        higher_is_better={"general_bpb": False, "math_bpb": False},
    )


class Scorer:
    def __init__(self, kill_after=None):
        self.calls: list[str] = []
        self.kill_after = kill_after

    def __call__(self, m):
        if self.kill_after is not None and len(self.calls) >= self.kill_after:
            raise KeyboardInterrupt  # what Ctrl-C or a dying worker leaves: the call never returns
        self.calls.append(mixture_key(m))
        return scores(m)


#: A fixed benchmark suite (on the held-out text of general and math, which every test keeps):
#: adding or removing a domain leaves what each proxy is scored on unchanged. (The default, one held-out benchmark per
#: domain, adds a benchmark with a domain; see docs/search.md, "Evidence reuse".)
SUITE = {
    "benchmarks": [{"name": f"{d}_bpb", "domain": d, "higher_is_better": False} for d in ("general", "math")],
    "capabilities": [{"name": d, "benchmarks": {f"{d}_bpb": 1.0}} for d in ("general", "math")],
}


def config_for(root, domains, rounds=(12, 6), **sampler):
    return config_from_dict({
        "output_dir": str(root),
        "data": {"domains": [{"name": d, "source": "x.jsonl"} for d in domains]},
        "evaluation": SUITE,
        "search": {"rounds": list(rounds), "pool_size": 2000, "top_k": 50, "cv_folds": 3, "sampler": sampler},
    })


def checkpoints(run, domains, content=b"weights"):
    for d in [run.base, *(run.component(x) for x in domains)]:
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "model.safetensors").exists():
            (d / "model.safetensors").write_bytes(content + d.name.encode())


def rows(run):
    with Store(run.store_url) as store:
        return {e.mixture_key: e for e in store.evaluations_done()}


def fitted_keys(run, r=0):
    """The keys round r was fitted on: its planned.json (rounds fit on every plan so far)."""
    import json

    return set(json.loads(run.round_files(r).planned.read_text())["keys"])


def dying_driver(run):
    """A store driver whose claims lapse at once: what a killed process leaves behind (its pending
    rows are re-queued to the next driver; this process itself lives on, so only its lease tells)."""
    return Store(run.store_url, lease_seconds=1e-3)


@pytest.fixture
def three(tmp_path):
    """A finished 3-domain search (sampler zeroing small weights, so some rows leave a domain out)."""
    run = RunDir(tmp_path / "run")
    domains = ["general", "math", "code"]
    checkpoints(run, domains)
    scorer = Scorer()
    run_search(config_for(run.root, domains, min_weight=0.25), run, scorer, {d: TOKENS4[d] for d in domains})
    return run, scorer


def test_adding_a_domain_keeps_every_row_and_evaluates_none_again(three):
    run, first = three
    before = rows(run)
    assert len(before) == len(first.calls) == 18
    domains = ["general", "math", "code", "web"]
    checkpoints(run, domains)
    scorer = Scorer()
    result = run_search(config_for(run.root, domains, min_weight=0.25), run, scorer, TOKENS4)
    assert not set(scorer.calls) & set(before), "an old row was evaluated again"
    after = rows(run)
    assert set(before) <= set(after)
    # Round 0 carries every old row (weight 0 on web) plus cover points that use web.
    assert set(before) <= fitted_keys(run, 0)
    cover = [after[k] for k in fitted_keys(run, 0) - set(before)]
    assert len(cover) == 3 and all(e.weights["web"] > 0 for e in cover)  # ceil(12 * 1 / 4)
    assert result.evaluations == len(before) + 3 + 6
    assert all(Evidence.judge(config_for(run.root, domains), run, after.values()).is_valid(e) for e in after.values())


def test_removing_a_domain_keeps_exactly_the_zero_weight_rows(three, caplog):
    run, _ = three
    before = rows(run)
    zero = {k for k, e in before.items() if round(e.weights["code"], 6) == 0}
    assert 0 < len(zero) < len(before)
    domains = ["general", "math"]
    config = config_for(run.root, domains, min_weight=0.25)
    evidence = Evidence.judge(config, run, before.values())
    assert {k for k, v in evidence.verdicts.items() if v == VALID} == zero
    assert evidence.counts()[REMOVED_DOMAIN] == len(before) - len(zero)
    assert evidence.by_domain(REMOVED_DOMAIN) == {"code": len(before) - len(zero)}
    scorer = Scorer()
    with caplog.at_level("INFO", logger="demix.search"):
        run_search(config, run, scorer, {d: TOKENS4[d] for d in domains})
    assert f"{len(before) - len(zero)} {REMOVED_DOMAIN}" in caplog.text
    assert not set(scorer.calls) & set(before)
    assert fitted_keys(run, 0) & set(before) == zero  # the others are set aside: never fitted
    assert set(before) <= set(rows(run))  # ... and kept in the store


def test_retraining_one_component_marks_exactly_the_rows_that_used_it(three):
    run, _ = three
    before = rows(run)
    used = {k for k, e in before.items() if round(e.weights["math"], 6) != 0}
    assert 0 < len(used) < len(before)
    (run.component("math") / "model.safetensors").write_bytes(b"retrained math")
    config = config_for(run.root, ["general", "math", "code"], min_weight=0.25)
    evidence = Evidence.judge(config, run, before.values())
    assert {k for k, v in evidence.verdicts.items() if v == STALE_COMPONENT} == used
    assert evidence.by_domain(STALE_COMPONENT) == {"math": len(used)}
    scorer = Scorer()
    run_search(config, run, scorer, {d: TOKENS4[d] for d in ["general", "math", "code"]})
    # Every stale row is planned again (same plans, same seed) and evaluated again; no other.
    assert sorted(scorer.calls) == sorted(used)
    after = rows(run)
    assert len(after) == len(before)
    assert all(Evidence.judge(config, run, after.values()).is_valid(e) for e in after.values())


def test_a_kill_while_a_domain_is_added_loses_nothing(three):
    run, _ = three
    before = set(rows(run))
    domains = ["general", "math", "code", "web"]
    checkpoints(run, domains)
    config = config_for(run.root, domains, min_weight=0.25)
    killed = Scorer(kill_after=2)
    with pytest.raises(KeyboardInterrupt), dying_driver(run) as store:
        run_search(config, run, killed, TOKENS4, store=store)
    assert set(rows(run)) == before | set(killed.calls)  # the two finished evaluations are committed
    resumed = Scorer()
    run_search(config, run, resumed, TOKENS4)
    assert not set(resumed.calls) & (before | set(killed.calls))
    assert len(killed.calls) + len(resumed.calls) == 3 + 6


def test_a_kill_while_stale_rows_are_evaluated_again_loses_nothing(three):
    run, _ = three
    (run.component("math") / "model.safetensors").write_bytes(b"retrained math")
    config = config_for(run.root, ["general", "math", "code"], min_weight=0.25)
    tokens = {d: TOKENS4[d] for d in ["general", "math", "code"]}
    stale = {k for k, e in rows(run).items() if round(e.weights["math"], 6) != 0}
    killed = Scorer(kill_after=3)
    with pytest.raises(KeyboardInterrupt), dying_driver(run) as store:
        run_search(config, run, killed, tokens, store=store)
    resumed = Scorer()
    run_search(config, run, resumed, tokens)
    assert sorted(killed.calls + resumed.calls) == sorted(stale)  # each stale row evaluated again once


def test_rows_of_an_older_demix_stay_valid_and_are_migrated(three):
    """A row recording only the whole-set fingerprint is valid when the set is the one it was
    made with (also after a domain is added), and gets the per-component record."""
    run, _ = three
    with Store(run.store_url) as store:
        for e in store.evaluations_done():
            store.annotate(e.mixture_key, {k: v for k, v in e.provenance.items() if k != "checkpoints"})
    before = rows(run)
    assert all("checkpoints" not in e.provenance and e.provenance["components"] for e in before.values())
    domains = ["general", "math", "code", "web"]
    checkpoints(run, domains)
    scorer = Scorer()
    run_search(config_for(run.root, domains, min_weight=0.25), run, scorer, TOKENS4)
    assert not set(scorer.calls) & set(before)
    after = rows(run)
    assert all("checkpoints" in after[k].provenance for k in before)


def test_demix_status_counts_valid_stale_and_set_aside(three, capsys):
    from demix.cli import main
    from demix.config import save_config

    run, _ = three
    before = rows(run)
    save_config(config_for(run.root, ["general", "math"], min_weight=0.25), run.config)
    (run.component("math") / "model.safetensors").write_bytes(b"retrained math")
    main(["status", str(run.root)])
    out = capsys.readouterr().out
    removed = sum(round(e.weights["code"], 6) != 0 for e in before.values())
    stale = sum(round(e.weights["code"], 6) == 0 and round(e.weights["math"], 6) != 0 for e in before.values())
    valid = len(before) - removed - stale
    assert f"valid for the current components: {valid}" in out
    assert f"{REMOVED_DOMAIN}: {removed}" in out and f"{STALE_COMPONENT}: {stale}" in out
    assert "code" in out and "math" in out


def test_cover_points_go_where_there_is_no_evidence():
    from demix.sampling import resolve_bounds
    from demix.search.planning import Planner, cover_points

    domains = ["general", "math", "code", "web"]
    config = config_for("/tmp/x", domains)
    bounds = resolve_bounds(domains, config.search.bounds, None, None)
    planner = Planner(config, bounds, np.full(4, 0.25))
    rng = np.random.default_rng(0)
    evidence = rng.dirichlet(np.ones(3), 40)
    evidence = np.hstack([evidence, np.zeros((40, 1))])
    picked = cover_points(domains, 5, evidence, planner, np.random.default_rng(1))
    drawn = np.random.default_rng(1).dirichlet(np.ones(4), 5)
    assert picked.shape == (5, 4) and np.allclose(picked.sum(axis=1), 1)
    assert picked[:, 3].mean() > drawn[:, 3].mean()  # farther from the web = 0 face than plain draws


# --- The default benchmarks (one held-out loss per domain): a domain added adds a benchmark ---


def default_config_for(root, domains, **evaluation):
    return config_from_dict({
        "output_dir": str(root),
        "data": {"domains": [{"name": d, "source": "x.jsonl"} for d in domains]},
        "evaluation": evaluation,
        "search": {"rounds": [12, 6], "pool_size": 2000, "top_k": 50, "cv_folds": 3, "sampler": {"min_weight": 0.25}},
    })


class HeldoutScorer(Scorer):
    """Scores every domain of the config on its own held-out text (what the default benchmarks
    measure): bits per byte fall as a domain's weight grows."""

    def __init__(self, domains, **kw):
        super().__init__(**kw)
        self.domains = domains

    def __call__(self, m):
        super().__call__(m)
        bpb = {d: 2.0 - float(m.get(d, 0.0)) ** 0.5 - 0.1 * float(m.get("general", 0.0)) for d in self.domains}
        return SimpleNamespace(
            benchmarks={f"heldout:{d}": v for d, v in bpb.items()},
            capabilities={d: -v for d, v in bpb.items()},
            higher_is_better={f"heldout:{d}": False for d in self.domains},
        )


@pytest.fixture
def three_default(tmp_path):
    run = RunDir(tmp_path / "run")
    domains = ["general", "math", "code"]
    checkpoints(run, domains)
    run_search(default_config_for(run.root, domains), run, HeldoutScorer(domains), {d: TOKENS4[d] for d in domains})
    return run


def test_adding_a_domain_with_default_benchmarks_reuses_every_row(three_default):
    import json

    from demix.search.files import BestMixture

    run = three_default
    before = rows(run)
    assert all("heldout:web" not in e.benchmarks for e in before.values())
    domains = ["general", "math", "code", "web"]
    checkpoints(run, domains)
    scorer = HeldoutScorer(domains)
    result = run_search(default_config_for(run.root, domains), run, scorer, TOKENS4)
    assert not set(scorer.calls) & set(before), "an old row was evaluated again"
    after = rows(run)
    assert {k: after[k].benchmarks for k in before} == {k: e.benchmarks for k, e in before.items()}  # untouched
    new = [after[k] for k in fitted_keys(run, 0) - set(before)]
    assert len(new) == 3 and all("heldout:web" in e.benchmarks for e in new)
    # heldout:web (and the capability made of it) is fitted on the rows scored with it; the rest on all.
    cv = json.loads(run.round_files(0).cv.read_text())
    assert cv["benchmarks"]["heldout:web"]["n"] == 3 and cv["capabilities"]["web"]["n"] == 3
    assert cv["benchmarks"]["heldout:math"]["n"] == len(before) + 3
    assert result.evaluations == len(before) + 3 + 6
    best = BestMixture.read(run.best_mixture)
    assert set(best.component_weights) == set(domains) and abs(sum(best.component_weights.values()) - 1) < 1e-6
    assert best.component_weights["web"] > 0


def test_any_other_settings_change_still_refuses(three_default):
    from demix.errors import DemixError

    run = three_default
    domains = ["general", "math", "code", "web"]
    checkpoints(run, domains)
    scorer = HeldoutScorer(domains)
    with pytest.raises(DemixError, match="scored under other settings"):
        run_search(default_config_for(run.root, domains, heldout_tokens=4096), run, scorer, TOKENS4)
    # Fewer benchmarks than the rows were scored with (here: a capability changed too) is no addition either.
    suite = {"benchmarks": [{"name": "heldout:general", "domain": "general", "higher_is_better": False}],
             "capabilities": [{"name": "general", "benchmarks": {"heldout:general": 1.0}}]}
    with pytest.raises(DemixError, match="scored under other settings"):
        run_search(default_config_for(run.root, domains[:3], **suite), run, HeldoutScorer(domains[:1]),
                   {d: TOKENS4[d] for d in domains[:3]})
    assert scorer.calls == []


# --- Each target's predictor kind resolved on its own row count ---


def _rows_with(n_a, n_b, seed=0):
    """Evaluations over 3 domains: every row scores benchmark ``a``; only the last ``n_b`` ``b``
    (what a benchmark added with a domain leaves: few rows have it)."""
    from demix.store import Evaluation

    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.ones(3), n_a)
    out = []
    for i, w in enumerate(W):
        m = dict(zip(("general", "math", "code"), map(float, w)))
        bench = {"a": float(1 - (w[0] - 0.5) ** 2)}
        caps = {"ca": bench["a"]}
        if i >= n_a - n_b:
            bench["b"] = float(w[1] + 0.5 * w[2] ** 2)
            caps["cb"] = bench["b"]
        out.append(Evaluation(i, mixture_key(m), "merged", 0, m, bench, caps, {}, "", ""))
    return out


def test_each_target_resolves_its_own_kind_and_reads_back(tmp_path):
    from demix.predictors import AUTO_MIN_LIGHTGBM, fit_predictors
    from demix.rundir import RoundFiles
    from demix.search.fitting import Fit, fit_all
    from demix.search.round_files import CvReport

    domains = ["general", "math", "code"]
    rows = _rows_with(AUTO_MIN_LIGHTGBM + 8, 6)
    fit = fit_all(rows, domains, {"a": True, "b": True}, "auto", folds=3)
    assert fit.benchmarks.kinds == {"a": "lightgbm", "b": "ridge"}
    assert fit.capabilities.kinds == {"ca": "lightgbm", "cb": "ridge"}
    assert fit.capabilities.kind == "lightgbm+ridge"
    assert {t: c.kind for t, c in fit.cv.benchmarks.items()} == {"a": "lightgbm", "b": "ridge"}
    assert fit.cv.benchmarks["b"].n == 6 and fit.cv.benchmarks["a"].n == len(rows)
    # Each target's predictions are those of its kind fitted on its own rows.
    P = np.random.default_rng(5).dirichlet(np.ones(3), 50)
    X = np.array([[e.weights[d] for d in domains] for e in rows])
    lone = fit_predictors(X[-6:], {"b": np.array([e.benchmarks["b"] for e in rows[-6:]])}, "ridge", domains)
    np.testing.assert_allclose(fit.benchmarks.predict(P)["b"], lone.predict(P)["b"])
    full = fit_predictors(X, {"a": np.array([e.benchmarks["a"] for e in rows])}, "lightgbm", domains)
    np.testing.assert_allclose(fit.benchmarks.predict(P)["a"], full.predict(P)["a"])
    assert fit.benchmarks.predict_matrix(P, ["b", "a"]).shape == (50, 2)
    # Written and read back (what a resumed search does): the same kinds and predictions.
    files = RoundFiles(tmp_path / "round_0")
    files.root.mkdir(parents=True)
    fit.write(files)
    meta = __import__("json").loads((files.predictors / "benchmarks" / "predictors.json").read_text())
    assert meta["kind"] == "per_target" and meta["kinds"] == {"a": "lightgbm", "b": "ridge"}
    back = Fit.read(files)
    assert back.benchmarks.kinds == fit.benchmarks.kinds
    np.testing.assert_array_equal(back.capabilities.predict_matrix(P, ["ca", "cb"]),
                                  fit.capabilities.predict_matrix(P, ["ca", "cb"]))
    assert {t: c.kind for t, c in CvReport.read(files.cv).capabilities.items()} == {"ca": "lightgbm", "cb": "ridge"}


def test_one_kind_keeps_the_single_predictors_layout(tmp_path):
    from demix.predictors import Predictors
    from demix.rundir import RoundFiles
    from demix.search.fitting import fit_all

    rows = _rows_with(40, 6)
    fit = fit_all(rows, ["general", "math", "code"], {"a": True, "b": True}, "ridge", folds=3)
    assert fit.benchmarks.kinds == {"a": "ridge", "b": "ridge"} and fit.benchmarks.kind == "ridge"
    files = RoundFiles(tmp_path / "round_0")
    fit.write(files)
    plain = Predictors.load(files.predictors / "benchmarks")  # what demix < 0.3 wrote and reads
    P = np.random.default_rng(1).dirichlet(np.ones(3), 20)
    np.testing.assert_allclose(plain.predict(P)["b"], fit.benchmarks.predict(P)["b"])


def test_a_garbled_per_target_fit_names_the_directory(tmp_path):
    from demix.errors import DemixError
    from demix.search.fitting import TargetPredictors

    d = tmp_path / "capabilities"
    d.mkdir()
    (d / "predictors.json").write_text('{"kind": "per_target", "targets": ["x"]}')
    with pytest.raises(DemixError, match="cannot read the predictor fit in .*capabilities"):
        TargetPredictors.load(d)


def test_a_domain_added_to_a_long_search_fits_its_benchmark_with_ridge_the_others_with_lightgbm(tmp_path):
    """A finished 3-domain search of 36 proxies (auto: LightGBM), then a 4th domain: its held-out
    benchmark has only the 3 cover points, so auto gives it Ridge while the others keep LightGBM."""
    import json

    from demix.search.files import BestMixture

    run = RunDir(tmp_path / "run")
    three_domains = ["general", "math", "code"]
    checkpoints(run, three_domains)
    config3 = default_config_for(run.root, three_domains)
    config3.search.rounds = [36]
    run_search(config3, run, HeldoutScorer(three_domains), {d: TOKENS4[d] for d in three_domains})
    domains = [*three_domains, "web"]
    checkpoints(run, domains)
    config = default_config_for(run.root, domains)
    config.search.rounds = [12]
    run_search(config, run, HeldoutScorer(domains), TOKENS4)
    cv = json.loads(run.round_files(0).cv.read_text())
    assert cv["benchmarks"]["heldout:web"] == {**cv["benchmarks"]["heldout:web"], "n": 3, "kind": "ridge"}
    assert cv["capabilities"]["web"]["kind"] == "ridge"
    assert {cv["benchmarks"][f"heldout:{d}"]["kind"] for d in three_domains} == {"lightgbm"}
    assert {cv["capabilities"][d]["kind"] for d in three_domains} == {"lightgbm"}
    assert BestMixture.read(run.best_mixture).predictor.kind == "lightgbm+ridge"
    # Resumed: the round's fit is read back (per kind), nothing evaluated, the same choice.
    before = BestMixture.read(run.best_mixture).component_weights
    again = HeldoutScorer(domains)
    run_search(config, run, again, TOKENS4)
    assert again.calls == [] and BestMixture.read(run.best_mixture).component_weights == before
