"""Exporters against golden files, their units, and the `demix export` command."""

import json
import os
from pathlib import Path

import pytest
import yaml

from demix.cli import main
from demix.errors import DemixError
from demix.exporters import export, exporter_names, get_exporter

GOLDEN = Path(__file__).parent / "golden"
BEST = GOLDEN / "best_mixture.json"
PREFIXES = ["general=/data/general_text_document", "math=/data/math_text_document"]


def test_every_issue_format_is_registered():
    assert set(exporter_names()) == {"megatron", "nemo", "nanotron", "olmo-core", "hf-datasets", "mosaic", "json"}
    for name in exporter_names():
        assert get_exporter(name).unit  # each documents the unit it writes


@pytest.mark.parametrize("fmt", ["megatron", "nemo", "nanotron", "olmo-core", "hf-datasets", "mosaic", "json"])
def test_export_matches_golden_file(fmt, tmp_path):
    golden = GOLDEN / f"export_{fmt}{get_exporter(fmt).suffix}"
    out = tmp_path / golden.name
    main(["export", str(BEST), "--to", fmt, "--out", str(out), *[a for p in PREFIXES for a in ("--data-prefix", p)]])
    if os.environ.get("DEMIX_UPDATE_GOLDEN"):
        golden.write_text(out.read_text())
    assert out.read_text() == golden.read_text()


def test_units_of_the_exports():
    megatron = export(BEST, "megatron", PREFIXES)
    # Token shares, zero-weight domains dropped, missing prefixes fall back to the domain name.
    assert megatron == "--data-path 0.5625 /data/general_text_document 0.25 /data/math_text_document 0.1875 code\n"
    olmo = yaml.safe_load(export(BEST, "olmo-core"))["source_mixture_config"]
    assert sum(s["target_ratio"] for s in olmo["source_configs"]) == 1.0  # OLMo-core checks == 1.0
    assert olmo["requested_tokens"] == 10**9
    assert {s["source_name"]: s["max_repetition_ratio"] for s in olmo["source_configs"]}["math"] >= 2.5
    hf = json.loads(export(BEST, "hf-datasets"))
    # Document probabilities: token share / mean document length, renormalised.
    raw = [0.5625 / 800, 0.25 / 2000, 0.1875 / 500]
    assert hf["probabilities"] == pytest.approx([r / sum(raw) for r in raw], rel=1e-5)
    assert sum(hf["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_bad_export_input(tmp_path):
    with pytest.raises(DemixError, match="unknown export format 'parquet'"):
        export(BEST, "parquet")
    with pytest.raises(DemixError, match="unknown domain 'web'"):
        export(BEST, "megatron", ["web=/x"])
    with pytest.raises(DemixError, match="does not exist"):
        export(tmp_path, "json")
    no_docs = tmp_path / "best_mixture.json"
    no_docs.write_text(json.dumps({"weights": {"a": 0.5, "b": 0.5}}))
    with pytest.raises(DemixError, match="mean_document_tokens"):
        export(no_docs, "hf-datasets")
    no_docs.write_text(json.dumps({"weights": {"a": 0.7, "b": 0.5}}))
    with pytest.raises(DemixError, match="sum to 1.2"):
        export(no_docs, "json")


def test_cli_error_exits_non_zero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(BEST), "--to", "parquet"])
    assert exit_.value.code == 1
    assert "unknown export format" in capsys.readouterr().err


def test_a_domain_given_twice_in_the_data_prefixes_is_refused():
    with pytest.raises(DemixError, match="--data-prefix gives domain 'math' twice"):
        export(BEST, "megatron", ["math=/a", "general=/g", "math=/b"])


def test_a_best_mixture_with_a_domain_given_twice_is_refused(tmp_path):
    path = tmp_path / "best_mixture.json"
    path.write_text('{"weights": {"general": 0.3, "math": 0.7, "general": 0.7}}')
    with pytest.raises(DemixError, match="key 'general' is given twice") as err:
        export(path, "json")
    assert str(path) in err.value.what
