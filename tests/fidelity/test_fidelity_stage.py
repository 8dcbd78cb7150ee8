"""The fidelity stage end to end on a miniature run: hidden-32 Llama, three domains, four
reference mixtures, two trained-proxy budgets. Real training, merging and evaluation; nothing mocked."""

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
    "fidelity.mixtures": "[{general: 0.2, math: 0.6, code: 0.2}]",
    "fidelity.trained_proxy_budgets": "[256, 512]",
    "train.reference.tokens": 1536,
    "fidelity.bootstrap": 200,
    "search.rounds": "[6]",
    "evaluation.heldout_tokens": 1024,
    "evaluation.batch_size": 8,
    "evaluation.device": "cpu",
    "train.heldout_tokens": 0,
}
GIVEN = {"general": 0.2, "math": 0.6, "code": 0.2}


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
    assert result.mixtures[0].source == "given" and result.mixtures[0].key == mixture_key(GIVEN)

    kinds = ["merged", trained_kind(256), trained_kind(512)]
    assert sorted(result.reports) == sorted(kinds)
    # 4 references + 8 trained proxies trained; 12 evaluated + 3 merged (the 4th came from the store).
    assert result.trained_now == 12 and result.evaluated_now == 15
    assert ("merged", mixture_key(GIVEN), "reused") in events
    for key in keys:
        assert (run.reference(key) / "model.safetensors").is_file()
        for b in (256, 512):
            prov = json.loads((run.trained_proxy(f"{key}@{b}") / "demix.json").read_text())
            assert prov["role"] == "trained_proxy" and prov["tokens_seen"] == b

    rows = _rows(run)
    for kind in ["reference", *kinds]:
        assert sum(1 for (_, k) in rows if k == kind) == 4
    with Store(run.store_url) as store:
        assert store.get(GIVEN, "merged").provenance["source"] == "demix search"  # reused, not re-evaluated
        ref = store.get(GIVEN, "reference")
    assert ref.provenance["recipe"]["tokens"] == config.train.reference.tokens

    d = run.fidelity
    for name in ("fidelity.json", "scores.json", "compute.json", "audit.json", "mixtures.json", "merged.json",
                 "trained@256.json", "trained@512.json"):
        assert (d / name).is_file(), name
    results = FidelityResults.read(run.fidelity_files.results)
    assert set(results.reports) == set(kinds)
    # The typed reader gives back exactly what the stage wrote.
    assert results.to_dict() == json.loads(run.fidelity_files.results.read_text())
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
    """The no-model baseline: Spearman of the reference scores against the domain's own weight."""
    from scipy.stats import spearmanr


    _, run, result, _ = first
    own = result.baselines["own_weight"]
    assert sorted(t.name for t in own.targets.values()) == ["code", "general", "math"]
    weights = {m.key: m.weights for m in result.mixtures}
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
    weights.write_bytes(weights.read_bytes())  # same weights, new file: what a retraining leaves behind
    with pytest.raises(DemixError) as exc:
        run_fidelity(changed, copy, progress=False)
    assert "other components" in exc.value.what and "output_dir" in exc.value.fix


def test_own_merged_rows_scored_under_other_settings_are_scored_again(first, tmp_path):
    """A merged proxy the stage stored under other evaluation settings is never reused: it is
    evaluated again and its row replaced (the search's row, recorded before settings were, is kept)."""
    from demix.search.settings import ScoringSettings

    config, run, _, _ = first
    changed, copy = _copy_run(config, run, tmp_path, **{"evaluation.heldout_tokens": 512})
    result = run_fidelity(changed, copy, progress=False)
    with Store(copy.store_url) as store:
        merged = store.evaluations_done("merged")
    own = [e for e in merged if e.round is None]
    assert len(own) == 3 and result.trained_now == 0 and result.evaluated_now == len(own)
    fingerprint = ScoringSettings.of(changed).fingerprint
    assert all(e.provenance["settings"] == fingerprint for e in own)
    assert all(e.provenance["scored_with"]["evaluation.heldout_tokens"] == 512 for e in own)


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
    a = reference_mixtures(config, counts)
    assert [m.key for m in a] == [m.key for m in reference_mixtures(config, counts)]
    other = config.model_copy(deep=True)
    other.fidelity.seed = 1
    assert [m.key for m in reference_mixtures(other, counts)][1:] != [m.key for m in a][1:]
    # Raising the count keeps the earlier references (so their trained models are reused).
    more = config.model_copy(deep=True)
    more.fidelity.num_references = 3 * config.fidelity.num_references
    b = reference_mixtures(more, counts)
    assert len(b) == len(a) + 2 * config.fidelity.num_references
    assert [m.key for m in b][: len(a)] == [m.key for m in a]

    bad = config.model_copy(deep=True)
    bad.fidelity.mixtures = [{"general": 0.5, "poetry": 0.5}]
    with pytest.raises(DemixError) as exc:
        reference_mixtures(bad, counts)
    assert "fidelity.mixtures[0]" in exc.value.what and "poetry" in exc.value.what

    empty = config.model_copy(deep=True)
    empty.fidelity.mixtures = []
    empty.fidelity.num_references = 0
    with pytest.raises(DemixError, match="no reference mixtures"):
        reference_mixtures(empty, counts)


def test_missing_components_fail_before_any_training(module_runs):
    make, _, _ = module_runs
    config, run = make("no_components")
    with pytest.raises(DemixError) as exc:
        run_fidelity(config, run, progress=False)
    assert "component" in exc.value.what and "demix train components" in exc.value.fix
    assert not run.reference(mixture_key(GIVEN)).exists()


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
