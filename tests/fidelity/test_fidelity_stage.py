"""The fidelity stage end to end on a miniature run: hidden-32 Llama, three domains, four
reference mixtures, two trained-proxy budgets. Real training, merging and evaluation; nothing mocked.

The components follow the standard recipe at general share 0.5, so the merged proxy of component
weights a stands for the data mixture data(a): general a_g + 0.5 (1 - a_g), every other domain
0.5 a_d; reference models and trained proxies are trained on data(a) (pairing data_mixture)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from demix.errors import DemixError
from demix.fidelity.files import FidelityResults, FidelityScores
from demix.fidelity.metrics import FidelityReport
from demix.fidelity.references import reference_mixtures
from demix.fidelity.stage import run_fidelity
from demix.mixtures import mixture_key
from demix.proxy_kind import trained as trained_kind
from demix.store import Store

SETTINGS = {
    "fidelity.num_references": 3,
    "fidelity.mixtures": "[{general: 0.6, math: 0.3, code: 0.1}]",  # a data mixture: GIVEN_DATA
    "fidelity.trained_proxy_budgets": "[256, 512]",
    "train.reference.tokens": 1536,
    "fidelity.bootstrap": 200,
    "search.rounds": "[6]",
    "evaluation.heldout_tokens": 1024,
    "evaluation.batch_size": 8,
    "evaluation.device": "cpu",
    "train.heldout_tokens": 0,
}
GIVEN_DATA = {"general": 0.6, "math": 0.3, "code": 0.1}
"""The given reference mixture (fidelity.mixtures): a data mixture."""
GIVEN = {"general": 0.2, "math": 0.6, "code": 0.2}
"""The component weights standing for GIVEN_DATA: 0.2 + 0.5 x 0.8 = 0.6 general, 0.5 x 0.6 math, 0.5 x 0.2 code."""


def data_of(a):
    """data(a) of the standard recipe at general share 0.5, written out (not through demix.data_mixture)."""
    return {d: (w + 0.5 * (1 - w)) if d == "general" else 0.5 * w for d, w in a.items()}


def standard_map():
    from demix.data_mixture import MixtureMap

    return MixtureMap.standard(["general", "math", "code"], "general", 0.5)


@pytest.fixture(scope="module")
def module_runs(tmp_path_factory, shared_data, trained_base, tiny_config):
    """A run with base and components trained (module scope: trained once for these tests)."""
    import shutil

    from demix.rundir import RunDir
    from demix.training import train_components

    def make(name: str, **overrides):
        root = tmp_path_factory.mktemp(name)
        (root / "data").symlink_to(shared_data / "data")
        (root / "tokenizer").symlink_to(shared_data / "tokenizer")
        config = tiny_config(root, **{**SETTINGS, **overrides})
        run = RunDir(root)
        shutil.copytree(trained_base, run.base)
        return config, run

    config, run = make("fidelity")
    train_components(config, run, show_progress=False)
    return make, config, run


@pytest.fixture(scope="module")
def first(module_runs):
    """The first fidelity run, after the search stored a merged evaluation of the given mixture."""
    from demix.evaluation import Evaluator
    from demix.merging import ProxyBuilder

    _, config, run = module_runs
    builder = ProxyBuilder.from_run(config, run, "cpu")
    ev = Evaluator.from_run(config, run, "cpu").evaluate(builder.build(GIVEN))
    with Store(run.store_url) as store:
        store.add(GIVEN, ev.benchmarks, ev.capabilities, "merged", 0, {"source": "demix search"})
    events: list[tuple[str, str, str]] = []
    result = run_fidelity(config, run, progress=False, on_event=lambda *e: events.append(e))
    return config, run, result, events


def _rows(run):
    with Store(run.store_url) as store:
        return {(e.mixture_key, e.proxy_kind): (e.completed_at, e.benchmarks) for e in store.evaluations_done()}


def test_stage_trains_evaluates_and_writes_its_files(first):
    config, run, result, events = first
    keys = [m.key for m in result.mixtures]
    assert len(keys) == 4 and len(set(keys)) == 4
    given = result.mixtures[0]
    assert given.source == "given" and given.key == mixture_key(GIVEN) and given.data_key == mixture_key(GIVEN_DATA)
    assert given.component_weights == pytest.approx(GIVEN) and given.data_mixture == pytest.approx(GIVEN_DATA)
    assert result.pairing == "data_mixture"
    for m in result.mixtures:
        assert m.data_mixture == pytest.approx(data_of(m.component_weights), abs=1e-12)
        assert m.data_mixture["general"] >= 0.5 - 1e-12 and m.key != m.data_key

    kinds = ["merged", trained_kind(256), trained_kind(512)]
    assert sorted(result.reports) == sorted(kinds)
    # 4 references + 8 trained proxies trained; 12 evaluated + 3 merged (the 4th came from the store).
    assert result.trained_now == 12 and result.evaluated_now == 15
    assert ("merged", mixture_key(GIVEN), "reused") in events
    for m in result.mixtures:
        # Trained on the data mixture the merged proxy stands for, and kept under its key.
        ref = json.loads((run.reference(m.data_key) / "demix.json").read_text())
        assert ref["role"] == "reference" and ref["mixture"] == pytest.approx(data_of(m.component_weights), abs=1e-9)
        assert not run.reference(m.key).exists()
        for b in (256, 512):
            prov = json.loads((run.trained_proxy(f"{m.data_key}@{b}") / "demix.json").read_text())
            assert prov["role"] == "trained_proxy" and prov["tokens_seen"] == b
            assert prov["mixture"] == pytest.approx(m.data_mixture, abs=1e-9)

    rows = _rows(run)
    for kind in ["reference", *kinds]:
        assert sum(1 for (_, k) in rows if k == kind) == 4
    with Store(run.store_url) as store:
        assert store.get(GIVEN, "merged").provenance["source"] == "demix search"  # reused, not re-evaluated
        ref = store.get(GIVEN_DATA, "reference")  # keyed by the data mixture it was trained on
        assert store.get(GIVEN, "reference") is None and store.get(GIVEN_DATA, "merged") is None
        assert store.get(GIVEN_DATA, trained_kind(256)) is not None
    assert ref.provenance["recipe"]["tokens"] == config.train.reference.tokens
    assert ref.provenance["model_dir"] == str(run.reference(mixture_key(GIVEN_DATA)))

    d = run.fidelity
    for name in ("fidelity.json", "scores.json", "compute.json", "audit.json", "mixtures.json", "merged.json",
                 "trained@256.json", "trained@512.json"):
        assert (d / name).is_file(), name
    results = FidelityResults.read(run.fidelity_files.results)
    assert set(results.reports) == set(kinds)
    # The typed reader gives back exactly what the stage wrote.
    assert results.to_dict() == json.loads(run.fidelity_files.results.read_text())
    assert results.pairing == "data_mixture" and results.mapping["region"] == "data mixtures with general >= 0.5"
    assert results.mixtures == result.mixtures
    assert [w.message for w in results.audit_warnings] == [w.message for w in result.audit.warnings()]
    merged = FidelityReport.load(d / "merged.json")
    assert merged.mixtures == sorted(keys)
    # Every capability is a target in the macro average, with n = 4 behind it.
    caps = [t for t in merged.targets.values() if t.capability]
    assert sorted(t.name for t in caps) == ["code", "general", "math"]
    assert merged.macro["spearman"].n == 4
    for t in caps:
        assert t.spearman.defined and -1 <= t.spearman.value <= 1
        assert t.spearman.ci_low <= t.spearman.value <= t.spearman.ci_high
        # Capabilities on held-out bpb are compared as 2**score: CRR is defined and positive.
        assert t.crr.defined and t.crr.value > 0
    # The top-25% of 4 mixtures is 1 point: undefined, and the reason says so.
    assert not merged.macro["top_spearman"].defined
    # Merged minus each trained kind, paired, in the result and in the summary rows.
    assert sorted(result.differences) == [trained_kind(256), trained_kind(512)]
    for kind, diff in result.differences.items():
        assert diff.value == pytest.approx(merged.macro["spearman"].value - result.reports[kind].macro["spearman"].value)
    summary = {r["proxy_kind"]: r for r in json.loads((d / "fidelity.json").read_text())["summary"]}
    assert "merged_minus_this" not in summary["merged"]
    assert summary[trained_kind(512)]["merged_minus_this"]["value"] == pytest.approx(result.differences[trained_kind(512)].value)
    assert results.row(trained_kind(512)).merged_minus_this.value == pytest.approx(result.differences[trained_kind(512)].value)

    scores = json.loads((d / "scores.json").read_text())
    key0 = keys[0]
    assert set(scores["scores"][key0]) == {"reference", *kinds}
    ref_caps = scores["scores"][key0]["reference"]["capabilities"]
    assert math.isclose(merged.targets["math"].scores[key0][0], 2.0 ** ref_caps["math"])
    typed = FidelityScores.read(run.fidelity_files.scores)
    assert typed.of(key0, "reference").capabilities == ref_caps and typed.ratio_scale_capabilities == ["code", "general", "math"]
    assert typed.component_weights[key0] == result.mixtures[0].component_weights
    assert typed.data_mixtures[key0] == pytest.approx(GIVEN_DATA)


def test_compute_accounting_sums_and_orders(first):
    config, run, result, _ = first
    compute = json.loads((run.fidelity / "compute.json").read_text())
    n = compute["search_proxies"]
    assert n == 6  # sum(search.rounds)
    budgets = {b["approach"]: b for b in compute["budgets"]}
    demix = budgets["demix"]
    assert demix["flops"] == pytest.approx(demix["train_flops"] + demix["eval_flops"])
    fp = compute["params"]["flop_params"]
    comp_tokens = sum(i["tokens"] for i in demix["items"] if i["kind"] == "train")
    assert comp_tokens == 3 * config.train.components.tokens
    assert demix["train_flops"] == pytest.approx(6 * fp * comp_tokens)
    assert demix["eval_flops"] == pytest.approx(2 * fp * n * compute["eval_tokens_per_model"])
    t256 = budgets[trained_kind(256)]
    assert t256["train_tokens"] == 256 * n
    assert t256["flops"] == pytest.approx(6 * fp * 256 * n + 2 * fp * n * compute["eval_tokens_per_model"])
    assert budgets[trained_kind(512)]["flops"] > t256["flops"]
    summary = {row["proxy_kind"]: row for row in json.loads((run.fidelity / "fidelity.json").read_text())["summary"]}
    assert summary["merged"]["flops"] == pytest.approx(demix["flops"])
    assert summary[trained_kind(512)]["train_tokens"] == 512 * n
    # A budget that is not whole steps (8 x 32 tokens each) is counted as the steps it trains.
    from demix.fidelity.compute import compute_accounting
    from demix.merging.builder import run_checkpoints

    base, comps = run_checkpoints(config, run)
    odd = {b["approach"]: b for b in compute_accounting(config, run, base, comps, 4, [300])["budgets"]}
    assert odd[trained_kind(300)]["train_tokens"] == 256 * n


def test_audit_and_proxy_gaps_are_written(first):
    _, run, result, _ = first
    audit = json.loads((run.fidelity / "audit.json").read_text())
    assert audit["components"] == ["general", "math", "code"]
    assert {g["mixture_id"] for g in audit["gaps"]} == {m.key for m in result.mixtures}
    for g in audit["gaps"]:
        assert g["relative_distance"] > 0
        assert set(g["score_gaps"]) == {"general", "math", "code"}


def test_own_weight_baseline_ranks_by_each_domains_share(first):
    """The no-model baseline: Spearman of the reference scores against the domain's share of the
    data mixture the reference was trained on."""
    from scipy.stats import spearmanr

    _, run, result, _ = first
    own = result.baselines["own_weight"]
    assert sorted(t.name for t in own.targets.values()) == ["code", "general", "math"]
    weights = {m.key: m.data_mixture for m in result.mixtures}
    merged = result.reports["merged"]
    for name, t in own.targets.items():
        keys = sorted(t.scores)
        ref = [merged.targets[name].scores[k][0] for k in keys]  # the same reference scores
        assert [t.scores[k][0] for k in keys] == ref
        assert [t.scores[k][1] for k in keys] == [weights[k][name] for k in keys]
        assert math.isclose(t.spearman.value, spearmanr(ref, [weights[k][name] for k in keys]).statistic, abs_tol=1e-12)
        assert not t.crr.defined  # weights and scores are on different scales
    assert FidelityResults.read(run.fidelity_files.results).baselines["own_weight"].to_dict() == own.to_dict()


def test_second_run_reuses_stored_models_and_scores(first):
    config, run, result, _ = first
    before = _rows(run)
    mtimes = {p: p.stat().st_mtime_ns for p in run.models.rglob("model.safetensors")}
    events: list[tuple[str, str, str]] = []
    again = run_fidelity(config, run, progress=False, on_event=lambda *e: events.append(e))
    assert again.trained_now == 0 and again.evaluated_now == 0
    assert events and all(action == "reused" for _, _, action in events)
    assert _rows(run) == before
    assert {p: p.stat().st_mtime_ns for p in run.models.rglob("model.safetensors")} == mtimes
    assert again.reports["merged"].to_dict() == result.reports["merged"].to_dict()


def test_changed_reference_recipe_is_refused(first):
    config, run, _, _ = first
    changed = config.model_copy(deep=True)
    changed.train.reference.lr = config.train.reference.lr * 2
    with pytest.raises(DemixError) as exc:
        run_fidelity(changed, run, progress=False)
    assert "recipe" in exc.value.what and "output_dir" in exc.value.fix


def _copy_run(config, run, tmp_path, **overrides):
    """A copy of the run directory (links kept) and its config, so a test can change it freely."""
    import shutil

    from demix.config import config_from_dict
    from demix.rundir import RunDir

    root = tmp_path / "copy"
    shutil.copytree(run.root, root, symlinks=True)
    data = config.model_dump(mode="json")
    data["output_dir"] = str(root)
    return config_from_dict(data, [f"{k}={v}" for k, v in overrides.items()]), RunDir(root)


def test_new_benchmarks_reevaluate_stored_models_without_training(first, tmp_path):
    """Adding a benchmark re-scores every stored model in place: nothing retrained, no duplicate rows."""
    config, run, _, _ = first
    bench = ("[{name: 'heldout:general', domain: general}, {name: 'heldout:math', domain: math}, "
             "{name: 'heldout:code', domain: code}, {name: nats_code, domain: code, metric: loss_per_token}]")
    changed, copy = _copy_run(config, run, tmp_path, **{"evaluation.benchmarks": bench})
    before = _rows(copy)
    mtimes = {p: p.stat().st_mtime_ns for p in copy.models.rglob("model.safetensors")}
    events: list[tuple[str, str, str]] = []
    result = run_fidelity(changed, copy, progress=False, on_event=lambda *e: events.append(e))
    assert result.trained_now == 0 and result.evaluated_now == len(before) == 16
    assert {p: p.stat().st_mtime_ns for p in copy.models.rglob("model.safetensors")} == mtimes
    after = _rows(copy)
    assert set(after) == set(before)  # replaced, not duplicated
    for (key, kind), (_, benchmarks) in after.items():
        assert benchmarks["nats_code"] > 0, (key, kind)
        # The held-out bpb benchmarks of the same model are unchanged by the re-evaluation.
        assert math.isclose(benchmarks["heldout:math"], before[(key, kind)][1]["heldout:math"], rel_tol=1e-6)
    assert "benchmark:nats_code" in result.reports["merged"].targets
    # A third run finds every row current.
    again = run_fidelity(changed, copy, progress=False)
    assert again.evaluated_now == 0 and again.trained_now == 0


def test_merged_rows_of_other_components_are_refused(first, tmp_path):
    """Merged rows record the components they were built from; retrained components make them stale."""
    config, run, _, _ = first
    changed, copy = _copy_run(config, run, tmp_path)
    with Store(copy.store_url) as store:
        made_here = [e for e in store.evaluations_done("merged") if e.provenance.get("source") == "demix fidelity"]
    assert made_here and all(e.provenance["components"] for e in made_here)
    weights = copy.component("math") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    weights.unlink()  # the copy may link to the shared run's file: never write through it
    start = 8 + int.from_bytes(data[:8], "little")
    data[start] ^= 1  # the lowest bit of the first stored value: what a retraining leaves behind, in miniature
    weights.write_bytes(bytes(data))
    with pytest.raises(DemixError) as exc:
        run_fidelity(changed, copy, progress=False)
    assert "other components" in exc.value.what and "output_dir" in exc.value.fix
    assert "math" in exc.value.what  # the component behind it, named


def test_merged_rows_stay_valid_when_a_domain_is_added(first, tmp_path):
    """Each merged row is judged on the base and the components it used (demix.search.evidence):
    a domain added after the search is weight 0 in every stored row, which is never refused."""
    from demix.config import config_from_dict
    from demix.fidelity.models import EvaluatedModels
    from demix.proxy_kind import MERGED

    config, run, _, _ = first
    _, copy = _copy_run(config, run, tmp_path)
    data = config.model_dump(mode="json")
    data["output_dir"] = str(copy.root)
    data["data"]["domains"].append({**data["data"]["domains"][-1], "name": "web"})
    grown = config_from_dict(data)
    with Store(copy.store_url) as store:
        merged = store.evaluations_done(MERGED)
    assert merged
    with EvaluatedModels(grown, copy, progress=False) as models:
        for row in merged:
            _, stale = models._stored(row.weights, MERGED)  # refused before: the whole-set fingerprint changed
            assert stale is None or "heldout:web" not in stale.benchmarks  # at most scored again on the new benchmark


def test_own_rows_scored_under_other_settings_are_scored_again(first, tmp_path):
    """A model the stage stored under other evaluation settings is never reused: merged proxies,
    reference models and trained proxies are evaluated again (nothing retrained) and their rows
    replaced (the search's row, recorded before settings were, is kept)."""
    from demix.search.settings import ScoringSettings

    config, run, _, _ = first
    before = _rows(run)
    changed, copy = _copy_run(config, run, tmp_path, **{"evaluation.heldout_tokens": 512})
    mtimes = {p: p.stat().st_mtime_ns for p in copy.models.rglob("model.safetensors")}
    result = run_fidelity(changed, copy, progress=False)
    with Store(copy.store_url) as store:
        rows = store.evaluations_done()
    own = [e for e in rows if e.proxy_kind == "merged" and e.round is None]
    trained = [e for e in rows if e.proxy_kind != "merged"]
    assert len(own) == 3 and len(trained) == len(before) - 3 - 1  # 3 merged of the stage, 1 of the search
    assert result.trained_now == 0 and result.evaluated_now == len(own) + len(trained)
    assert {p: p.stat().st_mtime_ns for p in copy.models.rglob("model.safetensors")} == mtimes
    fingerprint = ScoringSettings.of(changed).fingerprint
    assert all(e.provenance["settings"] == fingerprint for e in own)
    assert all(e.provenance["scored_with"]["evaluation.heldout_tokens"] == 512 for e in own + trained)
    # Trained models record the evaluation settings only: a merge setting does not change their scores.
    assert all(e.provenance["settings"] == ScoringSettings.of(changed, merged=False).fingerprint for e in trained)
    assert any(e.benchmarks != before[(e.mixture_key, e.proxy_kind)][1] for e in trained)
    again = run_fidelity(changed.model_copy(update={"merge": changed.merge.model_copy(update={"dtype": "float32"})}),
                         copy, progress=False)
    assert again.trained_now == 0 and again.evaluated_now == 3  # only the merged proxies


def test_search_rows_scored_under_other_settings_are_refused_before_training(first, tmp_path):
    from demix.search.settings import ScoringSettings

    config, run, _, _ = first
    changed, copy = _copy_run(config, run, tmp_path, **{"evaluation.heldout_tokens": 512})
    with Store(copy.store_url) as store:  # the search's row of GIVEN, as this demix's search records it
        row = store.get(GIVEN, "merged")
        store.replace(GIVEN, row.benchmarks, row.capabilities, "merged",
                      {**row.provenance, "source": "demix search", **ScoringSettings.of(config).provenance()})
    before = _rows(copy)
    with pytest.raises(DemixError) as exc:
        run_fidelity(changed, copy, progress=False)
    assert "1 merged evaluation(s) scored under other settings" in exc.value.what
    assert "evaluation.heldout_tokens: 1024 -> 512" in exc.value.what and "new output_dir" in exc.value.fix
    assert _rows(copy) == before


def test_reference_mixtures_are_seeded_and_validated(module_runs):
    make, config, _ = module_runs
    counts = {"general": 1000, "math": 500, "code": 500}
    mapping = standard_map()
    a = reference_mixtures(config, counts, mapping)
    assert [m.key for m in a] == [m.key for m in reference_mixtures(config, counts, mapping)]
    other = config.model_copy(deep=True)
    other.fidelity.seed = 1
    assert [m.key for m in reference_mixtures(other, counts, mapping)][1:] != [m.key for m in a][1:]
    # Raising the count keeps the earlier references (so their trained models are reused).
    more = config.model_copy(deep=True)
    more.fidelity.num_references = 3 * config.fidelity.num_references
    b = reference_mixtures(more, counts, mapping)
    assert len(b) == len(a) + 2 * config.fidelity.num_references
    assert [m.key for m in b][: len(a)] == [m.key for m in a]

    bad = config.model_copy(deep=True)
    bad.fidelity.mixtures = [{"general": 0.5, "poetry": 0.5}]
    with pytest.raises(DemixError) as exc:
        reference_mixtures(bad, counts, mapping)
    assert "fidelity.mixtures[0]" in exc.value.what and "poetry" in exc.value.what

    empty = config.model_copy(deep=True)
    empty.fidelity.mixtures = []
    empty.fidelity.num_references = 0
    with pytest.raises(DemixError, match="no reference mixtures"):
        reference_mixtures(empty, counts, mapping)


def test_the_pairing_decides_what_references_are_trained_on(module_runs):
    """Both pairings sample the same component weights; data_mixture pairs each with data(a),
    component_weights with a itself. Given mixtures are data mixtures under data_mixture."""
    _, config, _ = module_runs
    counts = {"general": 1000, "math": 500, "code": 500}
    mapping = standard_map()
    by_data = reference_mixtures(config, counts, mapping)
    old = config.model_copy(deep=True)
    old.fidelity.pairing = "component_weights"
    by_weights = reference_mixtures(old, counts, mapping)
    # The given data mixture GIVEN_DATA stands for the component weights GIVEN ...
    assert by_data[0].component_weights == pytest.approx(GIVEN) and by_data[0].data_mixture == pytest.approx(GIVEN_DATA)
    # ... and under component_weights the given mixture is component weights, also the reference's data.
    assert by_weights[0].component_weights == by_weights[0].data_mixture == pytest.approx(GIVEN_DATA)
    for x, y in zip(by_data[1:], by_weights[1:]):
        assert x.key == y.key and x.component_weights == y.component_weights  # the same merged proxies
        assert y.data_mixture == y.component_weights and y.data_key == y.key
        assert x.data_mixture == pytest.approx(data_of(x.component_weights), abs=1e-12)
        assert x.data_mixture["general"] >= 0.5 and x.data_key != x.key


def test_an_unreachable_given_data_mixture_is_refused(module_runs):
    _, config, _ = module_runs
    counts = {"general": 1000, "math": 500, "code": 500}
    mapping = standard_map()
    bad = config.model_copy(deep=True)
    # general 0.3 < the general share 0.5 every merged proxy's data holds: no merge stands for it.
    bad.fidelity.mixtures = [GIVEN_DATA, {"general": 0.3, "math": 0.5, "code": 0.2}]
    with pytest.raises(DemixError) as exc:
        reference_mixtures(bad, counts, mapping)
    assert "fidelity.mixtures[1]" in exc.value.what and "not reachable" in exc.value.what
    assert "data mixtures with general >= 0.5" in exc.value.what
    assert "fidelity.pairing: component_weights" in exc.value.fix
    # The same numbers are fine as component weights under the component_weights pairing.
    bad.fidelity.pairing = "component_weights"
    assert reference_mixtures(bad, counts, mapping)[1].data_mixture == pytest.approx({"general": 0.3, "math": 0.5, "code": 0.2})
    # The edge of the region is reachable: pure general data is the general component alone.
    edge = config.model_copy(deep=True)
    edge.fidelity.mixtures = [{"general": 0.5, "math": 0.5}]
    assert reference_mixtures(edge, counts, mapping)[0].component_weights == pytest.approx(
        {"general": 0.0, "math": 1.0, "code": 0.0})


def test_pairing_component_weights_trains_references_on_a_and_reuses_those_on_the_same_data(first, tmp_path):
    """The pre-0.2 pairing on a copy of the run: the reference of GIVEN is trained on GIVEN taken
    as data; GIVEN_DATA given as component weights needs a reference trained on GIVEN_DATA, which
    the data_mixture run trained already: it is reused (store rows are keyed by the data)."""
    config, run, _, _ = first
    changed, copy = _copy_run(config, run, tmp_path, **{
        "fidelity.pairing": "component_weights", "fidelity.num_references": 0, "fidelity.trained_proxy_budgets": "[256]",
        "fidelity.mixtures": "[{general: 0.2, math: 0.6, code: 0.2}, {general: 0.6, math: 0.3, code: 0.1}]",
    })
    events: list[tuple[str, str, str]] = []
    result = run_fidelity(changed, copy, progress=False, on_event=lambda *e: events.append(e))
    assert result.pairing == "component_weights"
    for m, want in zip(result.mixtures, (GIVEN, GIVEN_DATA), strict=True):
        assert m.component_weights == m.data_mixture == pytest.approx(want)
    prov = json.loads((copy.reference(mixture_key(GIVEN)) / "demix.json").read_text())
    assert prov["mixture"] == pytest.approx(GIVEN, abs=1e-12)
    # Trained here: the reference and trained proxy on GIVEN; reused: those on GIVEN_DATA.
    assert result.trained_now == 2
    assert ("reference", mixture_key(GIVEN_DATA), "reused") in events
    assert ("trained@256", mixture_key(GIVEN_DATA), "reused") in events
    assert ("merged", mixture_key(GIVEN), "reused") in events  # the search's, whatever the pairing
    assert ("merged", mixture_key(GIVEN_DATA), "evaluated") in events  # GIVEN_DATA as component weights: new
    with Store(copy.store_url) as store:
        both = {e.mixture_key for e in store.evaluations_done("reference")}
    assert {mixture_key(GIVEN), mixture_key(GIVEN_DATA)} <= both  # the references of both pairings, side by side
    assert FidelityResults.read(copy.fidelity_files.results).pairing == "component_weights"
    assert json.loads(copy.fidelity_files.mixtures.read_text())["pairing"] == "component_weights"


def test_missing_components_fail_before_any_training(module_runs):
    make, _, _ = module_runs
    config, run = make("no_components")
    with pytest.raises(DemixError) as exc:
        run_fidelity(config, run, progress=False)
    assert "component" in exc.value.what and "demix train components" in exc.value.fix
    assert not run.reference(mixture_key(GIVEN_DATA)).exists()


def test_cli_prints_the_table_and_exits_nonzero_on_errors(first, tmp_path, capsys):
    from demix.cli import main

    config, run, _, _ = first
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    main(["fidelity", str(cfg)])
    out = capsys.readouterr().out
    for text in ("merged", "trained@256", "macro", "rho", "CRR", "FLOPs", "reused", "own weight", "merged-this",
                 "no-model baseline"):
        assert text in out, text

    with pytest.raises(SystemExit) as exc:
        main(["fidelity", str(cfg), "-s", "fidelity.num_references=0", "-s", "fidelity.mixtures=[]"])
    assert exc.value.code == 1
    assert "no reference mixtures" in capsys.readouterr().err


def test_cli_help_explains_the_stage(capsys):
    from demix.cli import main

    try:
        main(["fidelity", "--help"])
    except SystemExit as exc:
        assert not exc.code
    out = " ".join(capsys.readouterr().out.split())  # the help is wrapped to the terminal width
    for text in ("reference model", "trained proxy", "Spearman", "reused", "demix train components"):
        assert text in out, text


def test_store_keeps_one_row_per_trained_budget(tmp_path):
    mixture = {"general": 0.5, "math": 0.5}
    with Store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
        assert store.add(mixture, {"b": 1.0}, {"c": -1.0}, trained_kind(256))
        assert store.add(mixture, {"b": 0.9}, {"c": -0.9}, trained_kind(512))
        assert not store.add(mixture, {"b": 0.8}, {"c": -0.8}, trained_kind(256))
        assert store.get(mixture, "trained@512").benchmarks == {"b": 0.9}
        for bad in ("trained@", "trained@x", "trained@0", "merged@5"):
            with pytest.raises(DemixError, match="unknown proxy kind"):
                store.add(mixture, {"b": 1.0}, {"c": -1.0}, bad)


def test_sampled_references_keep_the_searchs_data_mixture_bounds(module_runs):
    """search.bounds bound the data mixture: the sampled references' data shares hold them, so
    their component weights may go past them (math data share <= 0.2 is math weight <= 0.4)."""
    _, config, _ = module_runs
    counts = {"general": 1000, "math": 500, "code": 500}
    bounded = config.model_copy(deep=True)
    bounded.fidelity.mixtures = []
    bounded.fidelity.num_references = 12
    bounded.search.bounds.upper = {"math": 0.2}
    refs = reference_mixtures(bounded, counts, standard_map())
    assert len(refs) == 12
    assert all(m.data_mixture["math"] <= 0.2 + 1e-9 for m in refs)
    assert max(m.component_weights["math"] for m in refs) > 0.2  # bounds on the data, not on a
    # A bound outside what merging reaches is refused by the search's resolver, naming the region.
    bounded.search.bounds.upper = {"general": 0.4}
    with pytest.raises(DemixError, match="general >= 0.5"):
        reference_mixtures(bounded, counts, standard_map())
