"""Exporters against golden files, their units, the data mixture they write (component weights
only when asked), and the `demix export` command."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from demix.cli import main
from demix.data_mixture import MixtureMap
from demix.errors import DemixError
from demix.exporters import export, exporter_names, get_exporter
from helpers.battery import cli

GOLDEN = Path(__file__).parent / "golden"
BEST = GOLDEN / "best_mixture.json"
PREFIXES = ["general=/data/general_text_document", "math=/data/math_text_document"]
FORMATS = ["megatron", "nemo", "nanotron", "olmo-core", "hf-datasets", "mosaic", "json"]
DOMAINS = ["general", "math", "code", "books"]
#: The golden file's component weights (the merge coefficients of the chosen proxies).
A = np.array([0.5625, 0.25, 0.1875, 0.0])
#: The data mixture they stand for, with every non-general component trained on half general data.
DATA = A @ MixtureMap.standard(DOMAINS, "general", 0.5).matrix


def test_the_golden_file_holds_the_data_mixture_of_its_component_weights():
    best = json.loads(BEST.read_text())
    assert [best["component_weights"][d] for d in DOMAINS] == A.tolist()
    assert DATA.tolist() == [0.78125, 0.125, 0.09375, 0.0]  # general 0.5625 + 0.5 x 0.4375
    assert [best["data_mixture"][d] for d in DOMAINS] == DATA.tolist()
    # Tokens and epochs are those of the data mixture at the target budget.
    assert [best["tokens"][d] for d in DOMAINS] == [781_250_000, 125_000_000, 93_750_000, 0]
    assert best["epochs"] == {"general": 0.9765625, "math": 1.25, "code": 0.375, "books": 0.0}
    assert best["mapping"]["region"] == "data mixtures with general >= 0.5"


def test_every_issue_format_is_registered():
    assert set(exporter_names()) == set(FORMATS)
    for name in exporter_names():
        assert get_exporter(name).unit  # each documents the unit it writes


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_golden_file(fmt, tmp_path):
    golden = GOLDEN / f"export_{fmt}{get_exporter(fmt).suffix}"
    out = tmp_path / golden.name
    main(["export", str(BEST), "--to", fmt, "--out", str(out), *[a for p in PREFIXES for a in ("--data-prefix", p)]])
    if os.environ.get("DEMIX_UPDATE_GOLDEN"):
        golden.write_text(out.read_text())
    assert out.read_text() == golden.read_text()


def _written(fmt: str, text: str) -> dict[str, float]:
    """{domain: number} as the format writes it (data paths are /d/<domain>)."""
    dom = lambda p: p.rsplit("/", 1)[-1]  # noqa: E731
    if fmt == "json":
        return json.loads(text)
    if fmt == "megatron":
        args = text.split()
        assert args[0] == "--data-path"
        return {dom(p): float(w) for w, p in zip(args[1::2], args[2::2])}
    if fmt == "hf-datasets":
        hf = json.loads(text)
        return {dom(p): w for p, w in zip(hf["datasets"], hf["token_shares"])}
    y = yaml.safe_load(text)
    if fmt == "nemo":
        flat = y["model"]["data"]["data_prefix"]
        return {dom(p): w for w, p in zip(flat[::2], flat[1::2])}
    if fmt == "nanotron":
        ds = y["data_stages"][0]["data"]["dataset"]
        return {dom(p): w for p, w in zip(ds["dataset_folder"], ds["dataset_weights"])}
    if fmt == "olmo-core":
        return {s["source_name"]: s["target_ratio"] for s in y["source_mixture_config"]["source_configs"]}
    assert fmt == "mosaic"
    return {d: s["proportion"] for d, s in y["train_loader"]["dataset"]["streams"].items()}


ALL_PREFIXES = [f"{d}=/d/{d}" for d in DOMAINS]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_writes_the_data_mixture_by_default(fmt):
    text = export(BEST, fmt, ALL_PREFIXES)
    written = _written(fmt, text)
    # Zero shares are left out except by json; the rest are the data mixture a @ M, not the weights a.
    expected = {d: float(x) for d, x in zip(DOMAINS, DATA) if x > 0 or fmt == "json"}
    assert written == pytest.approx(expected, abs=1e-9)
    assert written["general"] == 0.78125 != A[0]
    if get_exporter(fmt).suffix == ".yaml":  # formats that take a comment say what they hold
        assert text.startswith(f"# demix export ({fmt}): data mixture: token shares of the training data")


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "hf-datasets"])
def test_weights_components_writes_the_component_weights(fmt, tmp_path):
    out = tmp_path / f"mix{get_exporter(fmt).suffix}"
    result = cli("export", str(BEST), "--to", fmt, "--weights", "components", "--out", str(out),
                 *[a for p in ALL_PREFIXES for a in ("--data-prefix", p)])
    assert result.code == 0, result.text
    assert "component weights: the merge coefficients of the proxies, NOT token shares" in result.text
    expected = {d: float(x) for d, x in zip(DOMAINS, A) if x > 0 or fmt == "json"}
    text = out.read_text()
    assert _written(fmt, text) == pytest.approx(expected, abs=1e-9)
    if out.suffix == ".yaml":
        assert text.startswith(f"# demix export ({fmt}): component weights: the merge coefficients")
        assert "data mixture: token shares" not in text


def test_olmo_core_repetitions_and_budget_come_from_the_data_mixture():
    for weights in ("data", "components"):
        olmo = yaml.safe_load(export(BEST, "olmo-core", weights=weights))["source_mixture_config"]
        assert sum(s["target_ratio"] for s in olmo["source_configs"]) == 1.0  # OLMo-core checks == 1.0
        assert olmo["requested_tokens"] == 10**9
        # The data mixture's epochs: math 0.125 x 1e9 / 1e8 = 1.25 (the component weight 0.25 would say 2.5).
        reps = {s["source_name"]: s["max_repetition_ratio"] for s in olmo["source_configs"]}
        assert reps == {"general": 1.0001, "math": pytest.approx(1.25 * 1.0001, abs=1e-5), "code": 1.0001}


def test_hf_datasets_probabilities_come_from_the_data_mixture():
    hf = json.loads(export(BEST, "hf-datasets"))
    # Document probabilities: data share / mean document length, renormalised.
    raw = [0.78125 / 800, 0.125 / 2000, 0.09375 / 500]
    assert hf["probabilities"] == pytest.approx([r / sum(raw) for r in raw], rel=1e-5)
    assert hf["probabilities"] == pytest.approx([0.796178, 0.0509554, 0.152866], abs=1e-6)
    assert sum(hf["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert hf["mixture"] == "data mixture" and hf["unit"] == "document probability"
    with pytest.raises(DemixError, match="component weights are merge coefficients, not token shares") as err:
        export(BEST, "hf-datasets", weights="components")
    assert "--weights data" in err.value.fix


def test_the_export_message_says_which_mixture_it_wrote(tmp_path):
    result = cli("export", str(BEST), "--to", "megatron", "--out", str(tmp_path / "m.txt"))
    assert result.code == 0
    assert "data mixture: token shares of the training data" in result.text and "unit: token share" in result.text
    # To the terminal: stdout is the file alone, stderr says what it holds.
    result = cli("export", str(BEST), "--to", "json")
    assert json.loads(result.out) == dict(zip(DOMAINS, DATA.tolist()))
    assert "data mixture" in result.err
    result = cli("export", str(BEST), "--to", "json", "--weights", "components")
    assert json.loads(result.out) == dict(zip(DOMAINS, A.tolist())) and "component weights" in result.err


def test_a_file_of_demix_before_0_2_is_refused_as_a_data_mixture(tmp_path):
    legacy = tmp_path / "best_mixture.json"
    # demix 0.1 wrote the component weights as "weights", labelled token shares.
    legacy.write_text(json.dumps({"weights": {"general": 0.5625, "math": 0.25, "code": 0.1875},
                                  "unit": "token share (fraction of training tokens drawn from each domain)",
                                  "target_tokens": 10**9, "epochs": {"general": 0.7, "math": 2.5, "code": 0.75}}))
    result = cli("export", str(legacy), "--to", "megatron")
    assert result.code == 1 and result.out == ""
    assert f"'{legacy}' was written by demix < 0.2" in result.text
    assert "component weights of the merged proxies, not the data mixture to train on" in result.text
    assert "rerun `demix search`" in result.text and "--weights components" in result.text
    assert "Traceback" not in result.text
    # Knowingly: its component weights, and no epochs of a data mixture (it recorded none).
    result = cli("export", str(legacy), "--to", "olmo-core", "--weights", "components")
    assert result.code == 0, result.text
    olmo = yaml.safe_load(result.out)["source_mixture_config"]["source_configs"]
    assert [s["target_ratio"] for s in olmo] == [0.5625, 0.25, 0.1875]
    assert [s["max_repetition_ratio"] for s in olmo] == [1.0001] * 3  # not its 2.5 "epochs" of the weights


def test_bad_export_input(tmp_path):
    with pytest.raises(DemixError, match="unknown export format 'parquet'"):
        export(BEST, "parquet")
    with pytest.raises(DemixError, match="unknown domain 'web'"):
        export(BEST, "megatron", ["web=/x"])
    with pytest.raises(DemixError, match="does not exist"):
        export(tmp_path, "json")
    with pytest.raises(DemixError, match="--weights is 'tokens'") as err:
        export(BEST, "json", weights="tokens")
    assert "--weights data" in err.value.fix
    no_docs = tmp_path / "best_mixture.json"
    no_docs.write_text(json.dumps({"data_mixture": {"a": 0.5, "b": 0.5}}))
    with pytest.raises(DemixError, match="mean_document_tokens"):
        export(no_docs, "hf-datasets")
    with pytest.raises(DemixError, match="holds no component weights"):
        export(no_docs, "json", weights="components")
    no_docs.write_text(json.dumps({"data_mixture": {"a": 0.7, "b": 0.5}}))
    with pytest.raises(DemixError, match=r"the data mixture of '.*best_mixture.json': .*sum to 1.2") as err:
        export(no_docs, "json")
    assert "sum to 1" in err.value.fix


def test_cli_error_exits_non_zero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(BEST), "--to", "parquet"])
    assert exit_.value.code == 1
    assert "unknown export format" in capsys.readouterr().err
    result = cli("export", str(BEST), "--weights", "both")
    assert result.code == 1 and "--weights is 'both'" in result.text


def test_a_domain_given_twice_in_the_data_prefixes_is_refused():
    with pytest.raises(DemixError, match="--data-prefix gives domain 'math' twice"):
        export(BEST, "megatron", ["math=/a", "general=/g", "math=/b"])


def test_a_best_mixture_with_a_domain_given_twice_is_refused(tmp_path):
    path = tmp_path / "best_mixture.json"
    path.write_text('{"data_mixture": {"general": 0.3, "math": 0.7, "general": 0.7}}')
    with pytest.raises(DemixError, match="key 'general' is given twice") as err:
        export(path, "json")
    assert str(path) in err.value.what
