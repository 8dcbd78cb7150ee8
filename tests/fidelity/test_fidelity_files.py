"""The fidelity stage's files: each record writes the layout docs/fidelity.md describes and reads
it back; a missing or garbled file is a DemixError naming it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from demix.errors import DemixError
from demix.fidelity import compare, paired_difference
from demix.fidelity.audit_report import AuditFinding
from demix.fidelity.files import (
    FidelityResults,
    FidelityScores,
    Scores,
    SummaryRow,
    read_mixtures,
    read_mixtures_file,
    write_compute,
    write_mixtures,
)
from demix.fidelity.metrics import FidelityReport
from demix.fidelity.references import ReferenceMixture
from demix.mixtures import mixture_key
from demix.proxy_kind import MERGED, REFERENCE, trained
from demix.rundir import RunDir


def _mixtures(n: int = 6) -> list[ReferenceMixture]:
    """Component weights and the data mixtures they stand for (standard recipe, general share 0.5)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w = rng.dirichlet([1.0, 1.0])
        weights = {"general": float(w[0]), "math": float(w[1])}
        data = {"general": 0.5 + 0.5 * weights["general"], "math": 0.5 * weights["math"]}
        out.append(ReferenceMixture(mixture_key(weights), weights, data, "given" if i == 0 else "sampled"))
    return out


def _results(mixtures: list[ReferenceMixture]) -> FidelityResults:
    rng = np.random.default_rng(1)
    ref = {m.key: {"general": float(rng.uniform(0.2, 0.8)), "math": float(rng.uniform(0.2, 0.8))} for m in mixtures}
    merged = {k: {t: v + 0.05 * float(rng.normal()) for t, v in row.items()} for k, row in ref.items()}
    slow = {k: {t: v + 0.2 * float(rng.normal()) for t, v in row.items()} for k, row in ref.items()}
    reports = {MERGED: compare(ref, merged, proxy_kind=MERGED, bootstrap=50),
               trained(256): compare(ref, slow, proxy_kind=trained(256), bootstrap=50)}
    # Constant proxy scores: every rank statistic undefined (NaN in memory, null on disk).
    flat = {k: {"general": 0.5} for k in ref}
    baselines = {"own_weight": compare({k: {"general": r["general"]} for k, r in ref.items()}, flat, bootstrap=50)}
    diff = paired_difference(reports[MERGED], reports[trained(256)])
    budget = {"flops": 1.5e12, "train_tokens": 1000, "eval_tokens": 200}
    summary = [SummaryRow.of(MERGED, reports[MERGED], budget),
               SummaryRow.of(trained(256), reports[trained(256)], budget, diff)]
    warning = AuditFinding("proxy_gap", "warning", mixtures[0].key, "all", math.nan, 1.0, "identical to the base")
    return FidelityResults(mixtures, reports, baselines, summary, [warning], ["a note"])


def test_fidelity_json_round_trips_in_the_documented_layout(tmp_path):
    mixtures = _mixtures()
    results = _results(mixtures)
    path = RunDir(tmp_path).fidelity_files.results
    results.write(path)
    raw = json.loads(path.read_text())
    assert list(raw) == ["version", "pairing", "mapping", "mixtures", "proxy_kinds", "reports", "baselines", "summary",
                         "audit_warnings", "notes", "groups", "rules"]
    assert raw["version"] == 2 and raw["proxy_kinds"] == [MERGED, trained(256)] and raw["pairing"] == "data_mixture"
    m0 = mixtures[0]
    assert raw["mixtures"][0] == {"key": m0.key, "data_key": mixture_key(m0.data_mixture), "source": "given",
                                  "component_weights": m0.component_weights, "data_mixture": m0.data_mixture}
    assert m0.data_key != m0.key
    row = raw["summary"][1]
    assert list(row)[:5] == ["proxy_kind", "flops", "train_tokens", "eval_tokens", "n"]
    assert {"spearman", "kendall", "top_spearman", "crr", "merged_minus_this", "per_capability"} <= set(row)
    assert "merged_minus_this" not in raw["summary"][0]
    assert raw["audit_warnings"] == [{"kind": "proxy_gap", "severity": "warning", "subject": mixtures[0].key,
                                      "group": "all", "value": None, "threshold": 1.0,
                                      "message": "identical to the base"}]
    assert "NaN" not in path.read_text()

    back = FidelityResults.read(path)
    assert back.to_dict() == json.loads(json.dumps(raw))
    assert back.mixtures == mixtures
    assert back.merged is not None and back.merged.to_dict() == results.reports[MERGED].to_dict()
    assert back.proxy_kinds == [MERGED, trained(256)]
    assert not back.baselines["own_weight"].macro["spearman"].defined
    row = back.row(trained(256))
    assert row is not None and row.flops == 1.5e12 and row.n == len(mixtures)
    assert row.macro["spearman"].value == pytest.approx(results.reports[trained(256)].macro["spearman"].value)
    assert row.merged_minus_this is not None and back.row(MERGED).merged_minus_this is None
    assert set(row.per_capability) == {"general", "math"}
    assert math.isnan(back.audit_warnings[0].value) and back.notes == ["a note"]


@pytest.mark.parametrize("content", ["{not json", "[]", '{"mixtures": []}', '{"mixtures": [{"key": "x"}], "reports": {}}'])
def test_a_garbled_fidelity_json_is_an_error_naming_it(tmp_path, content):
    path = RunDir(tmp_path).fidelity_files.results
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(DemixError) as exc:
        FidelityResults.read(path)
    assert str(path) in exc.value.what and "demix fidelity" in exc.value.fix


def test_a_missing_fidelity_json_is_an_error_naming_it(tmp_path):
    path = RunDir(tmp_path).fidelity_files.results
    with pytest.raises(DemixError) as exc:
        FidelityResults.read(path)
    assert str(path) in exc.value.what and "does not exist" in exc.value.what


def test_scores_mixtures_compute_and_kind_reports(tmp_path):
    files = RunDir(tmp_path).fidelity_files
    mixtures = _mixtures(3)
    write_mixtures(files.mixtures, mixtures, [256, 512], "data_mixture", {"region": "data mixtures with general >= 0.5"})
    assert json.loads(files.mixtures.read_text())["trained_proxy_budgets"] == [256, 512]
    assert read_mixtures(files.mixtures) == mixtures
    whole = read_mixtures_file(files.mixtures)
    assert whole.pairing == "data_mixture" and whole.trained_proxy_budgets == [256, 512]
    assert whole.mapping == {"region": "data mixtures with general >= 0.5"}

    s = {REFERENCE: Scores({"heldout:math": 1.2}, {"math": -1.2}), MERGED: Scores({"heldout:math": 1.3}, {"math": -1.3})}
    scores = FidelityScores({"heldout:math": False}, ["math"], {m.key: m.component_weights for m in mixtures},
                            {m.key: m.data_mixture for m in mixtures}, {m.key: dict(s) for m in mixtures})
    scores.write(files.scores)
    raw = json.loads(files.scores.read_text())
    assert list(raw) == ["version", "higher_is_better", "ratio_scale_capabilities", "component_weights",
                         "data_mixtures", "scores"]
    assert raw["scores"][mixtures[0].key][MERGED] == {"benchmarks": {"heldout:math": 1.3}, "capabilities": {"math": -1.3}}
    back = FidelityScores.read(files.scores)
    assert back == scores and back.of(mixtures[1].key, REFERENCE).capabilities == {"math": -1.2}
    with pytest.raises(DemixError, match="no trained@256 scores"):
        back.of(mixtures[1].key, trained(256))

    write_compute(files.compute, {"search_proxies": 6})
    assert json.loads(files.compute.read_text()) == {"version": 2, "search_proxies": 6}

    report = _results(mixtures).reports[MERGED]
    report.save(files.report(MERGED))
    assert FidelityReport.load(files.report(MERGED)).to_dict() == report.to_dict()
    files.report(MERGED).write_text('{"proxy_kind": "merged"}')
    with pytest.raises(DemixError) as exc:
        FidelityReport.load(files.report(MERGED))
    assert str(files.report(MERGED)) in exc.value.what
    files.scores.write_text("{")
    with pytest.raises(DemixError, match="scores.json"):
        FidelityScores.read(files.scores)


def _format_1(mixtures: list[ReferenceMixture]) -> dict:
    """fidelity.json as demix before 0.2 wrote it: one ``weights`` per mixture, no pairing."""
    data = _results(mixtures).to_dict()
    data["version"] = 1
    del data["pairing"], data["mapping"]
    data["mixtures"] = [{"key": m.key, "source": m.source, "weights": m.component_weights} for m in mixtures]
    return data


def test_files_of_demix_before_0_2_are_read_by_migration(tmp_path):
    """Their ``weights`` were the component weights and, taken as data, the references' data
    mixture: read back as both, under the component_weights pairing."""
    files = RunDir(tmp_path).fidelity_files
    mixtures = _mixtures(3)
    files.root.mkdir(parents=True)
    files.results.write_text(json.dumps(_format_1(mixtures)))
    back = FidelityResults.read(files.results)
    assert back.pairing == "component_weights" and back.mapping == {} and back.version == 2
    for m, old in zip(back.mixtures, mixtures, strict=True):
        assert m.key == old.key and m.component_weights == m.data_mixture == old.component_weights
        assert m.data_key == m.key  # the reference was trained on the component weights as data
    assert back.merged is not None and back.merged.macro["spearman"].n == 3

    files.mixtures.write_text(json.dumps({
        "version": 1, "trained_proxy_budgets": [256],
        "mixtures": [{"key": m.key, "source": m.source, "weights": m.component_weights} for m in mixtures]}))
    old_mixtures = read_mixtures_file(files.mixtures)
    assert old_mixtures.pairing == "component_weights" and old_mixtures.trained_proxy_budgets == [256]
    assert [m.data_mixture for m in old_mixtures.mixtures] == [m.component_weights for m in mixtures]

    s = {REFERENCE: {"benchmarks": {"heldout:math": 1.2}, "capabilities": {"math": -1.2}}}
    files.scores.write_text(json.dumps({
        "version": 1, "higher_is_better": {"heldout:math": False}, "ratio_scale_capabilities": ["math"],
        "weights": {m.key: m.component_weights for m in mixtures}, "scores": {m.key: s for m in mixtures}}))
    scores = FidelityScores.read(files.scores)
    assert scores.component_weights == scores.data_mixtures == {m.key: m.component_weights for m in mixtures}


def test_a_fidelity_file_of_a_newer_format_is_refused_by_name(tmp_path):
    files = RunDir(tmp_path).fidelity_files
    files.root.mkdir(parents=True)
    data = _results(_mixtures(3)).to_dict()
    data["version"] = 3
    files.results.write_text(json.dumps(data))
    with pytest.raises(DemixError) as exc:
        FidelityResults.read(files.results)
    assert str(files.results) in exc.value.what and "format version 3" in exc.value.what
    assert "upgrade demix" in exc.value.fix
    data["version"], data["pairing"] = 2, "by_name"
    files.results.write_text(json.dumps(data))
    with pytest.raises(DemixError, match="unknown pairing 'by_name'"):
        FidelityResults.read(files.results)
