"""The search's typed run files: the layout demix always wrote, one reader and writer each,
clear errors on garbled files, the comparison rows, and whether a finished search is current."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from demix.errors import DemixError
from demix.mixtures import mixture_key
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
    # A search's file, byte for byte.
    path = GOLDEN / "best_mixture_search.json"
    best = BestMixture.read(path)
    assert best.to_dict() == json.loads(path.read_text())
    best.write(tmp_path / "best_mixture.json")
    assert (tmp_path / "best_mixture.json").read_text() == path.read_text()
    assert best.predicted.benchmarks["math_bpb"].higher_is_better is False
    assert not best.legacy and best.mixture("data") == best.data_mixture
    # The natural data mixture (token shares 0.6, 0.2, 0.2) is reachable at share 0.5, through
    # component weights (0.2, 0.4, 0.4); uniform (general 1/3) is not: its nearest reachable one.
    natural, uniform = best.baselines["natural"], best.baselines["uniform"]
    assert natural.data_mixture == pytest.approx({"general": 0.6, "math": 0.2, "code": 0.2}) and natural.reachable
    assert natural.component_weights == pytest.approx({"general": 0.2, "math": 0.4, "code": 0.4})
    assert not uniform.reachable and uniform.data_target == pytest.approx({d: 1 / 3 for d in DOMAINS})
    assert uniform.data_mixture == pytest.approx({"general": 0.5, "math": 0.25, "code": 0.25}, abs=1e-6)
    assert [r.planned for r in best.rounds] == [12, 6] and best.components is None
    # A file of demix 0.1: its "weights" were component weights; read as such, never as a data mixture.
    legacy = BestMixture.read(GOLDEN / "best_mixture_search_v0.1.json")
    assert legacy.legacy and legacy.data_mixture is None and legacy.mapping is None
    assert legacy.mixture("components") == legacy.component_weights == pytest.approx(
        {"general": 0.50417, "math": 0.29417, "code": 0.20166}, abs=1e-5)
    with pytest.raises(DemixError, match="written by demix < 0.2") as err:
        legacy.mixture("data")
    assert "rerun `demix search`" in err.value.fix
    assert legacy.baselines["natural"].component_weights == {"general": 0.6, "math": 0.2, "code": 0.2}
    assert legacy.rounds[0].component_weights and legacy.rounds[0].data_mixture is None
    # A hand-written file with a few of the fields (the exporters' golden input).
    partial = GOLDEN / "best_mixture.json"
    best = BestMixture.read(partial)
    assert best.to_dict() == json.loads(partial.read_text())
    assert best.predicted is None and best.baselines == {} and best.mean_document_tokens["math"] == 2000.0


def test_the_search_writes_the_layout_it_always_wrote(golden_run):
    config, run, result = golden_run
    written = json.loads(run.best_mixture.read_text())
    assert written["settings"] == ScoringSettings.of(config).fingerprint
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
        # Round files hold component weights, and say so.
        assert json.loads(files.planned.read_text())["unit"].startswith("component weights")
        assert json.loads(files.selection.read_text())["unit"].startswith("component weights")
    assert RoundPlan.read(run.round_files(1).planned).keys == json.loads(run.round_files(1).planned.read_text())["keys"]


def test_best_mixture_holds_both_mixtures_data_is_a_at_m_and_the_budget_is_the_datas(golden_run):
    """The miniature search's best_mixture.json: component weights (what was ranked), the data
    mixture a @ M they stand for, and tokens / epochs from the data mixture."""
    from demix.data_mixture import MixtureMap

    config, run, result = golden_run
    best = json.loads(run.best_mixture.read_text())
    mapping = MixtureMap.from_dict(best["mapping"])
    np.testing.assert_array_equal(mapping.matrix, MixtureMap.standard(DOMAINS, "general", 0.5).matrix)
    a = np.array([best["component_weights"][d] for d in DOMAINS])
    data = np.array([best["data_mixture"][d] for d in DOMAINS])
    np.testing.assert_allclose(data, a @ mapping.matrix, rtol=0, atol=1e-15)
    assert data[0] >= 0.5 and data.sum() == pytest.approx(1.0)
    assert best["tokens"] == {d: round(x * 1000) for d, x in zip(DOMAINS, data)}
    assert best["epochs"] == pytest.approx({d: x * 1000 / TOKENS[d] for d, x in zip(DOMAINS, data)})
    assert best["mixture_key"] == mixture_key(best["component_weights"])  # the store's key of the proxy
    for r in best["rounds"]:
        ra = np.array([r["component_weights"][d] for d in DOMAINS])
        np.testing.assert_allclose([r["data_mixture"][d] for d in DOMAINS], ra @ mapping.matrix, atol=1e-15)
    for b in best["baselines"].values():
        ba = np.array([b["component_weights"][d] for d in DOMAINS])
        np.testing.assert_allclose([b["data_mixture"][d] for d in DOMAINS], ba @ mapping.matrix, atol=1e-12)
    assert result.data_mixture == best["data_mixture"] and result.component_weights == best["component_weights"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "cannot be read"),
        ("[1, 2]", "not an object"),
        ('{"unit": "token share"}', "no key 'data_mixture'"),
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
    # uniform (general 1/3) is not reachable at general share 0.5: its column is its nearest reachable one.
    assert header == ["", "chosen", "natural", "uniform (nearest reachable)", "CV RMSE", "CV Spearman (n)"]
    assert [r[0] for r in rows] == ["data general", "data math", "data code", "component general", "component math",
                                    "component code", "predicted code", "predicted general", "predicted math"]
    assert rows[0] == ["data general", "0.752", "0.600", "0.500", "", ""]
    assert rows[3] == ["component general", "0.504", "0.200", "0.000", "", ""]
    assert rows[4] == ["component math", "0.294", "0.400", "0.500", "", ""]
    code = best.predicted.capabilities["code"]
    natural, uniform = (best.baselines[n].predicted.capabilities["code"].value for n in ("natural", "uniform"))
    assert rows[6] == ["predicted code", f"{code.value:.4f}", f"{natural:.4f}", f"{uniform:.4f}", f"{code.cv_rmse:.4f}",
                       "1.00 (18)"]
    best.predicted.capabilities["code"].cv_spearman = None
    best.predicted.capabilities["code"].cv_rmse = None
    assert comparison_rows(best)[1][6][-2:] == ["-", "undefined (18)"]
    # A hand-written data mixture without predictions or baselines: its data rows only.
    header, rows = comparison_rows(BestMixture(data_mixture={"a": 0.25, "b": 0.75}))
    assert header == ["", "chosen", "CV RMSE", "CV Spearman (n)"] and rows == [
        ["data a", "0.250", "", ""], ["data b", "0.750", "", ""]]
    # A file of demix 0.1: component weights only, never shown as a data mixture.
    header, rows = comparison_rows(BestMixture.read(GOLDEN / "best_mixture_search_v0.1.json"))
    assert header[1:4] == ["chosen", "natural", "uniform"]
    assert [r[0] for r in rows][:3] == ["component general", "component math", "component code"]
    assert rows[0][:4] == ["component general", "0.504", "0.600", "0.333"]


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


def test_a_pool_that_cannot_be_written_names_its_file_and_keeps_the_old_one(tmp_path):
    """pool.npz goes through rundir.atomic_write: an OS error is one DemixError naming the file,
    and an existing pool is never half-replaced."""
    import numpy as np

    pool = CandidatePool(["a", "b"], ["c"], np.array([[0.5, 0.5]]), np.array([[1.0]]), np.array([0.3]), np.array([0]))
    blocker = tmp_path / "round_0"
    blocker.write_text("a file where the round directory should be")
    with pytest.raises(DemixError, match="pool.npz"):
        pool.write(blocker / "pool.npz")
    good = tmp_path / "pool.npz"
    pool.write(good)
    assert CandidatePool.read(good).weights.tolist() == [[0.5, 0.5]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.npz", "round_0"]  # no temporary left
