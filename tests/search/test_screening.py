"""Screening in the search loop (search.screening): screened rows are their own proxy kind,
only the survivors are scored in full and fitted, a killed screen resumes, bad settings fail
before anything is evaluated. Tiny real merged proxies (tests/tiny_run.py), real lm_eval tasks."""

from __future__ import annotations

import json
import math

import pytest

from demix import proxy_kind
from demix.errors import DemixError
from demix.executors import LocalExecutor, MergedProxyScorer
from demix.mixtures import mixture_key
from demix.search import run_search
from demix.store import Store
from tiny_run import build_tiny_run

BENCHMARKS = [
    {"name": "heldout:math", "domain": "math"},
    {"name": "heldout:code", "domain": "code"},
    {"name": "general_mc", "evaluator": "lm_eval", "task": "demix_heldout_mc_general", "limit": 8},
    {"name": "code_bpb", "evaluator": "lm_eval", "task": "demix_humaneval_bpb", "limit": 4},
]
SCREENING = {"enabled": True, "fraction": 0.5, "keep": 0.5}


def _run(root, screening=SCREENING, rounds=(6, 3), benchmarks=BENCHMARKS):
    from demix.config import config_from_dict

    config, run = build_tiny_run(root, rounds=rounds)
    data = config.model_dump(mode="json")
    data["evaluation"]["benchmarks"] = benchmarks
    data["search"]["screening"] = screening
    return config_from_dict(data), run


class _KilledAfter(Exception):
    pass


class _DyingScorer(MergedProxyScorer):
    """The run's real scorer, whose process 'dies' after ``screens`` screens (a kill mid-round)."""

    def __init__(self, config, run, screens: int) -> None:
        super().__init__(config, run, "cpu")
        self.left = screens

    def screen(self, mixture, fraction):
        if self.left == 0:
            raise _KilledAfter()
        self.left -= 1
        return super().screen(mixture, fraction)


def _search(config, run, scorer=None):
    scorer = scorer or MergedProxyScorer(config, run, "cpu")
    from demix.rundir import read_token_counts

    return run_search(config, run, None, read_token_counts(run, config.data.domain_names), executor=LocalExecutor(scorer))


@pytest.fixture(scope="module")
def screened_search(tmp_path_factory):
    config, run = _run(tmp_path_factory.mktemp("screened"))

    result = _search(config, run)
    return config, run, result


def test_only_survivors_are_scored_in_full_and_fitted(screened_search):
    config, run, result = screened_search
    kind = proxy_kind.screened(0.5)
    with Store(run.store_url) as store:
        screens = {e.mixture_key: e for e in store.evaluations_done(kind)}
        full = {e.mixture_key: e for e in store.evaluations_done(proxy_kind.MERGED)}
    planned = [json.loads(run.round_files(r).planned.read_text())["mixtures"] for r in range(2)]
    keys = [[mixture_key(m) for m in p] for p in planned]
    # Every planned mixture was screened; each round scored ceil(keep x n) of them in full (no
    # ties at margin 0 on these continuous objectives) and the fit saw exactly those.
    assert set(screens) == {k for ks in keys for k in ks}
    for r, ks in enumerate(keys):
        record = json.loads(run.round_files(r).screening.read_text())
        kept = [p["mixture_key"] for p in record["proxies"] if p["full"]]
        assert len(kept) == math.ceil(0.5 * len(ks))
        assert set(kept) <= set(full)
        # The survivors are the best by screened objective.
        objectives = sorted((p["screened_objective"] for p in record["proxies"]), reverse=True)
        assert sorted((p["screened_objective"] for p in record["proxies"] if p["full"]), reverse=True) == objectives[:len(kept)]
        assert not ({p["mixture_key"] for p in record["proxies"] if not p["full"]} & set(full))
    assert len(full) == 3 + 2
    assert result.evaluations == len(full)
    cv = json.loads(run.round_files(1).cv.read_text())
    assert cv["n"] == len(full)


def test_a_screen_records_its_documents_and_scores_held_out_loss_in_full(screened_search):
    config, run, _ = screened_search
    with Store(run.store_url) as store:
        screens = {e.mixture_key: e for e in store.evaluations_done(proxy_kind.screened(0.5))}
        full = store.evaluations_done(proxy_kind.MERGED)
    row = full[0]
    screen = screens[row.mixture_key]
    docs = screen.provenance["screening"]["documents"]
    assert docs["general_mc"]["of"] == 8 and len(docs["general_mc"]["documents"]) == 4
    assert docs["code_bpb"]["of"] == 4 and len(docs["code_bpb"]["documents"]) == 2
    assert set(docs) == {"general_mc", "code_bpb"}  # held-out benchmarks are not screened
    assert screen.provenance["round"] == row.provenance["round"]
    assert screen.provenance["plan_index"] == row.provenance["plan_index"]
    # Held-out loss is the full one in both passes; the lm_eval scores differ (half the documents).
    for b in ("heldout:math", "heldout:code"):
        assert screen.benchmarks[b] == pytest.approx(row.benchmarks[b], rel=1e-6)
    assert screen.benchmarks["code_bpb"] != pytest.approx(row.benchmarks["code_bpb"], rel=1e-6)
    # A full score stored by a screened search is the plain full evaluation of that proxy.
    scorer = MergedProxyScorer(config, run, "cpu")
    fresh = scorer({d: float(w) for d, w in row.weights.items()})
    for b, v in row.benchmarks.items():
        assert fresh.benchmarks[b] == pytest.approx(v, rel=1e-6)


def test_a_finished_screened_search_resumes_without_scoring_anything(screened_search):
    config, run, first = screened_search
    again = _search(config, run)
    assert again.evaluated_now == 0
    assert again.component_weights == first.component_weights


def test_a_search_killed_mid_screen_resumes_to_the_same_choice(screened_search, tmp_path):
    config, run = _run(tmp_path)
    with pytest.raises(_KilledAfter):
        _search(config, run, _DyingScorer(config, run, screens=4))
    kind = proxy_kind.screened(0.5)
    with Store(run.store_url) as store:
        assert store.count(kind) == 4 and store.count(proxy_kind.MERGED) == 0
        owners = set(store.pending_keys(kind).values())
    # The 'killed' driver lives on in this process: release its claim as its death would (a
    # real kill is released by the next search: tests/search/test_search_resume.py).
    for owner in owners:
        with Store(run.store_url, owner=owner) as dead:
            dead.release_pending(kind)
    resumed = _search(config, run)
    with Store(run.store_url) as store:
        assert store.count(kind) == 9 and store.count(proxy_kind.MERGED) == 5
    # Same seed, same tiny models: the same screens, survivors and choice as an unbroken search.
    assert resumed.component_weights == pytest.approx(screened_search[2].component_weights, abs=1e-12)


def test_screening_without_lm_eval_tasks_fails_before_any_evaluation(tmp_path):
    config, run = _run(tmp_path, benchmarks=BENCHMARKS[:2])
    with pytest.raises(DemixError, match="no benchmark in evaluation.benchmarks is an lm_eval task") as err:
        _search(config, run)
    assert "search.screening.enabled" in err.value.fix
    with Store(run.store_url) as store:
        assert store.count() == 0


def test_a_scorer_that_cannot_screen_is_refused(tmp_path):
    config, run = _run(tmp_path)
    scorer = MergedProxyScorer(config, run, "cpu")
    with pytest.raises(DemixError, match="has no screen"):
        from demix.rundir import read_token_counts

        run_search(config, run, None, read_token_counts(run, config.data.domain_names),
                   executor=LocalExecutor(lambda m: scorer(m)))


@pytest.mark.parametrize("bad", [{"fraction": 1.0}, {"fraction": 0}, {"keep": 0}, {"margin": -1}, {"rate": 2}])
def test_bad_screening_settings_are_config_errors(tmp_path, bad):
    from demix.config import config_from_dict

    config, _ = build_tiny_run(tmp_path, rounds=(4,))
    data = config.model_dump(mode="json")
    data["search"]["screening"] = {"enabled": True, **bad}
    with pytest.raises(DemixError, match="search.screening"):
        config_from_dict(data)


def test_screening_settings_change_no_fingerprint_while_off(tmp_path):
    from demix.config import config_from_dict
    from demix.search.settings import ranking_fingerprint

    config, _ = build_tiny_run(tmp_path, rounds=(4,))
    data = config.model_dump(mode="json")
    data["search"]["screening"] = {"enabled": False, "fraction": 0.1}
    assert ranking_fingerprint(config_from_dict(data), None) == ranking_fingerprint(config, None)
    data["search"]["screening"] = {"enabled": True}
    assert ranking_fingerprint(config_from_dict(data), None) != ranking_fingerprint(config, None)
