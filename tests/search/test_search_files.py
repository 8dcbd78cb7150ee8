"""The search's typed run files: the layout demix always wrote, one reader and writer each,
clear errors on garbled files, the comparison rows, and whether a finished search is current."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from demix.errors import DemixError
from demix.rundir import RunDir
from demix.search import (
    BestMixture,
    CandidatePool,
    CvReport,
    ParetoFront,
    RoundPlan,
    Selection,
    comparison_rows,
    run_search,
    search_is_complete,
)
from demix.search.settings import ScoringSettings
from search_fixtures import DOMAINS, TOKENS, golden_search, make_config, synthetic_result

GOLDEN = Path(__file__).parents[1] / "golden"


def same(a, b, path="$"):
    """Equal JSON trees: same keys in the same order, numbers within float noise."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: {list(a)} != {list(b) if isinstance(b, dict) else b}"
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
    config, run, tokens = golden_search(tmp_path_factory.mktemp("golden") / "run")
    result = run_search(config, run, lambda m: synthetic_result(m), tokens)
    return config, run, result


def test_best_mixture_round_trips_the_files_demix_wrote(tmp_path):
    # A search's file, byte for byte (written by the search before it was typed).
    path = GOLDEN / "best_mixture_search.json"
    best = BestMixture.read(path)
    assert best.to_dict() == json.loads(path.read_text())
    best.write(tmp_path / "best_mixture.json")
    assert (tmp_path / "best_mixture.json").read_text() == path.read_text()
    assert best.predicted.benchmarks["math_bpb"].higher_is_better is False
    assert best.baselines["natural"].weights == {"general": 0.6, "math": 0.2, "code": 0.2}
    assert [r.planned for r in best.rounds] == [12, 6] and best.components is None
    # A hand-written file with a few of the fields (the exporters' golden input).
    partial = GOLDEN / "best_mixture.json"
    best = BestMixture.read(partial)
    assert best.to_dict() == json.loads(partial.read_text())
    assert best.predicted is None and best.baselines == {} and best.mean_document_tokens["math"] == 2000.0


def test_the_search_writes_the_layout_it_always_wrote(golden_run):
    config, run, result = golden_run
    written = json.loads(run.best_mixture.read_text())
    # The one key added since: what the proxies were scored with (demix.search.settings), last.
    assert list(written)[-1] == "settings" and written.pop("settings") == ScoringSettings.of(config).fingerprint
    same(json.loads((GOLDEN / "best_mixture_search.json").read_text()), written)
    assert result.best == BestMixture.read(run.best_mixture)
    for r in range(2):
        files = run.round_files(r)
        for record in (RoundPlan, CvReport, Selection):
            path = getattr(files, {RoundPlan: "planned", CvReport: "cv", Selection: "selection"}[record])
            assert record.read(path).to_dict() == json.loads(path.read_text()), path
        pool = CandidatePool.read(files.pool)
        assert pool.domains == DOMAINS and pool.weights.shape == (4000, 3) and pool.capability_scores.shape == (4000, 3)
        assert pool.top_k.size == 100 and np.isneginf(pool.objective).any()  # math >= natural rules some out
        front = ParetoFront.read(files.pareto)
        assert front.domains == DOMAINS and front.capabilities == pool.capabilities
        assert front.weights.shape[0] == Selection.read(files.selection).pareto_size
        front.write(files.root / "again.csv")
        assert (files.root / "again.csv").read_text() == files.pareto.read_text()
    assert RoundPlan.read(run.round_files(1).planned).keys == json.loads(run.round_files(1).planned.read_text())["keys"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "cannot be read"),
        ("[1, 2]", "not an object"),
        ('{"unit": "token share"}', "no key 'weights'"),
        ('{"weights": {"general": "half", "math": 0.5}}', "weight 'general' is 'half', not a number"),
        ('{"weights": {"general": NaN, "math": 0.5}}', "not finite"),
        ('{"weights": {"general": 1.0}, "top_k": {"k": "many"}}', "is not a best_mixture.json"),
    ],
)
def test_a_garbled_best_mixture_is_an_error_naming_the_file(tmp_path, content, match):
    path = tmp_path / "best_mixture.json"
    path.write_text(content)
    with pytest.raises(DemixError, match=match) as err:
        BestMixture.read(path)
    assert str(path) in err.value.what and "demix search" in err.value.fix


def test_a_missing_best_mixture_says_to_search_first(tmp_path):
    with pytest.raises(DemixError, match="does not exist") as err:
        BestMixture.read(tmp_path / "best_mixture.json")
    assert "run `demix search` first" in err.value.fix


def test_a_garbled_or_pickled_pool_is_an_error(tmp_path):
    path = tmp_path / "pool.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DemixError, match="is not a candidate pool") as err:
        CandidatePool.read(path)
    assert str(path) in err.value.what
    # An object array would unpickle on load: refused, never executed.
    np.savez(path, weights=np.array([{"x": 1}], dtype=object), capability_scores=np.zeros((1, 1)), objective=np.zeros(1),
             top_k=np.zeros(1, dtype=int), domains=np.array(["a"]), capabilities=np.array(["c"]))
    with pytest.raises(DemixError, match="allow_pickle"):
        CandidatePool.read(path)
    np.savez(path, weights=np.zeros((1, 1)))
    with pytest.raises(DemixError, match="is not a candidate pool"):
        CandidatePool.read(path)


def test_a_garbled_round_plan_says_to_delete_it(tmp_path):
    path = tmp_path / "planned.json"
    path.write_text('{"round": 0, "size": 2, "domains": ["a"]}')
    with pytest.raises(DemixError, match="no key 'mixtures'") as err:
        RoundPlan.read(path)
    assert "delete it" in err.value.fix


def test_comparison_rows_put_the_chosen_mixture_beside_the_baselines():
    best = BestMixture.read(GOLDEN / "best_mixture_search.json")
    header, rows = comparison_rows(best)
    assert header == ["", "chosen", "natural", "uniform", "CV RMSE", "CV Spearman (n)"]
    assert rows[0] == ["weight general", "0.504", "0.600", "0.333", "", ""]
    assert [r[0] for r in rows] == ["weight general", "weight math", "weight code", "predicted code", "predicted general",
                                    "predicted math"]
    code = best.predicted.capabilities["code"]
    assert rows[3] == ["predicted code", f"{code.value:.4f}", "1.0000", "0.8933", f"{code.cv_rmse:.4f}", "1.00 (18)"]
    best.predicted.capabilities["code"].cv_spearman = None
    best.predicted.capabilities["code"].cv_rmse = None
    assert comparison_rows(best)[1][3][-2:] == ["-", "undefined (18)"]
    # A file without predictions or baselines (hand-written): weights only.
    header, rows = comparison_rows(BestMixture(weights={"a": 0.25, "b": 0.75}))
    assert header == ["", "chosen", "CV RMSE", "CV Spearman (n)"] and rows == [
        ["weight a", "0.250", "", ""], ["weight b", "0.750", "", ""]]


def test_search_is_complete_only_for_the_same_plan_and_components(tmp_path):
    from demix.config import config_from_dict

    config = make_config(tmp_path / "run", rounds=(6, 3), pool_size=500, top_k=20)
    run = RunDir(config.run_dir)
    assert not search_is_complete(config, run)
    run.base.mkdir(parents=True)
    (run.base / "model.safetensors").write_bytes(b"weights")
    run_search(config, run, lambda m: synthetic_result(m), TOKENS)
    assert BestMixture.read(run.best_mixture).components
    assert search_is_complete(config, run)
    for override in ("search.rounds=[6, 3, 2]", "search.pool_size=2000", "search.objective=weighted",
                     "search.constraints=['math >= natural']", "search.capability_weights={math: 2.0}"):
        assert not search_is_complete(config_from_dict(config.model_dump(mode="json"), [override]), run), override
    assert search_is_complete(config_from_dict(config.model_dump(mode="json"), ["search.top_k=40"]), run)
    (run.base / "model.safetensors").write_bytes(b"retrained weights")
    assert not search_is_complete(config, run)
    run.best_mixture.write_text("{not json")
    assert not search_is_complete(config, run)
