"""Exporters against golden files, their units, the data mixture they write (component weights
only when asked), missing data paths, repetition warnings, the trainer settings they need, and
the `demix export` command. tests/exporters/ loads every format with the trainers' own classes."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from demix.cli import main
from demix.data_mixture import MixtureMap
from demix.errors import DemixError
from demix.exporters import ExportOptions, export, exporter_names, get_exporter, sum_to_one
from demix.search.files import BestMixture
from helpers.battery import cli

GOLDEN = Path(__file__).parent / "golden"
BEST = GOLDEN / "best_mixture.json"
PREFIXES = ["general=/data/general_text_document", "math=/data/math_text_document", "code=/data/code_text_document"]
SETTINGS = ["--seq-length", "4096", "--global-batch-tokens", "4194304"]
OPTIONS = ExportOptions(seq_length=4096, global_batch_tokens=4194304)
FORMATS = ["megatron", "megatron-per-split", "megatron-bridge", "nemo2", "nemo1", "nanotron", "olmo-core",
           "olmo-core-sources", "hf-datasets", "mosaic", "litdata", "torchtitan", "json"]
DOMAINS = ["general", "math", "code", "books"]
#: The golden file's component weights (the merge coefficients of the chosen proxies).
A = np.array([0.5625, 0.25, 0.1875, 0.0])
#: The data mixture they stand for, with every non-general component trained on half general data.
DATA = A @ MixtureMap.standard(DOMAINS, "general", 0.5).matrix


def prefix_args(items: list[str]) -> list[str]:
    return [a for p in items for a in ("--data-prefix", p)]


def test_the_golden_file_holds_the_data_mixture_of_its_component_weights():
    best = json.loads(BEST.read_text())
    assert [best["component_weights"][d] for d in DOMAINS] == A.tolist()
    assert DATA.tolist() == [0.78125, 0.125, 0.09375, 0.0]  # general 0.5625 + 0.5 x 0.4375
    assert [best["data_mixture"][d] for d in DOMAINS] == DATA.tolist()
    # Tokens and epochs are those of the data mixture at the target budget.
    assert [best["tokens"][d] for d in DOMAINS] == [781_250_000, 125_000_000, 93_750_000, 0]
    assert best["epochs"] == {"general": 0.9765625, "math": 1.25, "code": 0.375, "books": 0.0}
    assert best["mapping"]["region"] == "data mixtures with general >= 0.5"


def test_every_format_is_registered_with_its_trainer_unit_and_repetition():
    assert sorted(exporter_names()) == sorted(FORMATS)
    for name in exporter_names():
        exporter = get_exporter(name)
        assert exporter.unit and exporter.trainer and exporter.repetition and exporter.description


def test_the_nemo_1_format_is_asked_for_by_its_explicit_name():
    with pytest.raises(DemixError, match="export format 'nemo' was renamed") as err:
        get_exporter("nemo")
    assert "nemo2" in err.value.fix and "nemo1" in err.value.fix and "megatron-bridge" in err.value.fix


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_golden_file(fmt, tmp_path):
    golden = GOLDEN / f"export_{fmt}{get_exporter(fmt).suffix}"
    out = tmp_path / golden.name
    main(["export", str(BEST), "--to", fmt, "--out", str(out), *prefix_args(PREFIXES), *SETTINGS])
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
        return {dom(p): float(w) for w, p in zip(args[::2], args[1::2])}
    if fmt in ("hf-datasets", "megatron-per-split", "litdata", "torchtitan"):
        doc = json.loads(text)
        if fmt == "hf-datasets":
            return {dom(p): w for p, w in zip(doc["datasets"], doc["token_shares"])}
        if fmt == "megatron-per-split":
            args = doc["train"].split()
            return {dom(p): float(w) for w, p in zip(args[::2], args[1::2])}
        if fmt == "litdata":
            return {dom(p): w for p, w in zip(doc["input_dirs"], doc["combined_streaming_dataset"]["weights"])}
        return {s["dataset"]: s["weight"] for s in doc["sources"]}
    y = yaml.safe_load(text)
    if fmt in ("nemo1", "nemo2"):
        flat = y["model"]["data"]["data_prefix"] if fmt == "nemo1" else y["data"]["paths"]
        return {dom(p): w for w, p in zip(flat[::2], flat[1::2])}
    if fmt == "megatron-bridge":
        paths, weights = y["dataset"]["blend"]
        return {dom(p): w for p, w in zip(paths, weights)}
    if fmt == "nanotron":
        ds = y["data_stages"][0]["data"]["dataset"]
        return {dom(p): w for p, w in zip(ds["dataset_folder"], ds["dataset_weights"])}
    if fmt in ("olmo-core", "olmo-core-sources"):
        sources = y["source_list"]["sources"] if fmt == "olmo-core" else y["sources"]
        return {s["source_name"]: s["target_ratio"] for s in sources}
    assert fmt == "mosaic"
    return {d: s["proportion"] for d, s in y["train_loader"]["dataset"]["streams"].items()}


ALL_PREFIXES = [f"{d}=/d/{d}" for d in DOMAINS]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_writes_the_data_mixture_by_default(fmt):
    text = export(BEST, fmt, ALL_PREFIXES, options=OPTIONS)
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
                 *prefix_args(ALL_PREFIXES), *SETTINGS)
    assert result.code == 0, result.text
    assert "component weights: the merge coefficients of the proxies, NOT token shares" in result.text
    expected = {d: float(x) for d, x in zip(DOMAINS, A) if x > 0 or fmt == "json"}
    text = out.read_text()
    assert _written(fmt, text) == pytest.approx(expected, abs=1e-9)
    if out.suffix == ".yaml":
        assert text.startswith(f"# demix export ({fmt}): component weights: the merge coefficients")
        assert "data mixture: token shares" not in text


def test_the_megatron_file_is_weight_prefix_pairs_only():
    text = export(BEST, "megatron", PREFIXES)
    args = text.split()
    # --data-args-path takes the file's tokens as w1 p1 w2 p2 ...: an odd count or a flag breaks it.
    assert len(args) == 6 and not any(a.startswith("--") for a in args) and text.count("\n") == 1
    assert [float(w) for w in args[::2]] == [0.78125, 0.125, 0.09375]
    per_split = json.loads(export(BEST, "megatron-per-split", PREFIXES, options=OPTIONS))
    assert per_split["train"] == text.strip() and per_split["valid"] is None and per_split["test"] is None
    assert per_split["demix"]["train_samples"] == math.ceil(10**9 / 4096) == 244141


def test_samples_and_batch_come_from_the_budget_and_the_settings():
    bridge = yaml.safe_load(export(BEST, "megatron-bridge", PREFIXES, options=OPTIONS))
    assert bridge["dataset"]["split"] == "100,0,0" and bridge["dataset"]["seq_length"] == 4096
    assert bridge["train"] == {"train_iters": None, "train_samples": 244141}
    nemo = yaml.safe_load(export(BEST, "nemo2", PREFIXES, options=OPTIONS))["data"]
    assert (nemo["num_train_samples"], nemo["global_batch_size"], nemo["seq_length"]) == (244141, 1024, 4096)
    assert nemo["_target_"].endswith("PreTrainingDataModule")
    mosaic = yaml.safe_load(export(BEST, "mosaic", PREFIXES, options=OPTIONS))["train_loader"]["dataset"]
    assert mosaic["epoch_size"] == 244141  # repetition follows the plan, not the corpus size
    # Without --seq-length the formats that can leave the samples out do.
    assert "train" not in yaml.safe_load(export(BEST, "megatron-bridge", PREFIXES))
    assert "num_train_samples" not in yaml.safe_load(export(BEST, "nemo2", PREFIXES))["data"]


def test_olmo_core_repetitions_and_budget_come_from_the_data_mixture():
    for weights in ("data", "components"):
        olmo = yaml.safe_load(export(BEST, "olmo-core", PREFIXES, weights=weights, options=OPTIONS))
        sources = olmo["source_list"]["sources"]
        assert math.fsum(s["target_ratio"] for s in sources) == 1.0
        assert olmo["requested_tokens"] == 10**9 and olmo["global_batch_size"] == 4194304 and olmo["seed"] == 42
        # The data mixture's epochs x 1.1 headroom, rounded up: math 0.125 x 1e9 / 1e8 = 1.25 -> 1.375
        # (the component weight 0.25 would say 2.5); general 0.977 -> 1.0743; code 0.375 -> 1 (the minimum).
        reps = {s["source_name"]: s["max_repetition_ratio"] for s in sources}
        assert reps == {"general": 1.0743, "math": 1.375, "code": 1.0}
    sources = yaml.safe_load(export(BEST, "olmo-core-sources", PREFIXES, options=ExportOptions(repetition_headroom=0.2)))["sources"]
    assert {s["source_name"]: s["max_repetition_ratio"] for s in sources} == {"general": 1.1719, "math": 1.5, "code": 1.0}


def test_olmo_core_without_the_global_batch_is_refused_naming_the_option(tmp_path):
    result = cli("export", str(BEST), "--to", "olmo-core", *prefix_args(PREFIXES), "--out", str(tmp_path / "o.yaml"))
    assert result.code == 1 and "the olmo-core format needs --global-batch-tokens" in result.text
    assert "Traceback" not in result.text and not (tmp_path / "o.yaml").exists()
    result = cli("export", str(BEST), "--to", "mosaic", *prefix_args(PREFIXES))
    assert result.code == 1 and "the mosaic format needs --seq-length" in result.text
    result = cli("export", str(BEST), "--to", "olmo-core", *prefix_args(PREFIXES), "--seq-length", "4096",
                 "--global-batch-tokens", "5000")
    assert result.code == 1 and "--global-batch-tokens 5000 is not a multiple of --seq-length 4096" in result.text


def test_hf_datasets_probabilities_come_from_the_data_mixture():
    hf = json.loads(export(BEST, "hf-datasets", PREFIXES))
    call = hf["interleave_datasets"]
    # Document probabilities: data share / mean document length, renormalised, summing to exactly 1.
    raw = [0.78125 / 800, 0.125 / 2000, 0.09375 / 500]
    assert call["probabilities"] == pytest.approx([r / sum(raw) for r in raw], rel=1e-15)
    assert sum(call["probabilities"]) == math.fsum(call["probabilities"]) == 1.0
    # math needs 1.25 passes: all_exhausted repeats; the budget is the first `examples` documents.
    assert call["seed"] == 42 and call["stopping_strategy"] == "all_exhausted"
    assert hf["examples"] == round(10**9 * sum(raw)) == 1226562
    assert hf["mixture"] == "data mixture" and hf["unit"] == "document probability"
    with pytest.raises(DemixError, match="component weights are merge coefficients, not token shares") as err:
        export(BEST, "hf-datasets", PREFIXES, weights="components")
    assert "--weights data" in err.value.fix


def test_hf_datasets_stops_at_the_first_exhausted_domain_when_nothing_repeats():
    best = BestMixture(data_mixture={"a": 0.5, "b": 0.5}, mean_document_tokens={"a": 100.0, "b": 300.0},
                       target_tokens=1000, epochs={"a": 0.5, "b": 0.9})
    hf = json.loads(get_exporter("hf-datasets").render(best, {"a": "/a", "b": "/b"}))
    assert hf["interleave_datasets"]["stopping_strategy"] == "first_exhausted"
    assert hf["interleave_datasets"]["probabilities"] == [0.75, 0.25] and hf["examples"] == 7


def test_probabilities_sum_to_exactly_one_for_random_mixtures():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        k = int(rng.integers(2, 11))
        raw = (rng.dirichlet(np.ones(k)) / rng.uniform(50, 5000, k)).tolist()
        p = sum_to_one(raw)
        # Every way a trainer sums them: left to right, right to left, exactly, numpy's pairwise sum.
        assert sum(p) == sum(reversed(p)) == math.fsum(p) == float(np.sum(np.asarray(p))) == 1.0
        assert p == pytest.approx([r / math.fsum(raw) for r in raw], rel=1e-12, abs=1e-15)
    assert sum_to_one([0.0, 2.0]) == [0.0, 1.0]
    assert sum_to_one([1e-30, 1.0])[0] > 0  # a positive share stays positive


def test_a_domain_without_a_data_path_is_an_error_naming_it_and_the_options(tmp_path):
    out = tmp_path / "mix.txt"
    result = cli("export", str(BEST), "--to", "megatron", "--data-prefix", "general=/g", "--out", str(out))
    assert result.code == 1 and result.out == "" and not out.exists()
    assert "no data path for domain(s) math, code" in result.text
    assert "--data-prefix DOMAIN=PATH" in result.text and "--allow-placeholder-paths" in result.text
    assert "Traceback" not in result.text
    # Asked for, the names stand in; json names no paths, so it needs none.
    result = cli("export", str(BEST), "--to", "megatron", "--data-prefix", "general=/g", "--allow-placeholder-paths")
    assert result.code == 0 and result.out == "0.78125 /g 0.125 math 0.09375 code\n"
    assert cli("export", str(BEST), "--to", "json").code == 0
    # A domain of share 0 (books) is left out of the file, so it needs no path.
    assert cli("export", str(BEST), "--to", "nanotron", *prefix_args(PREFIXES)).code == 0


def test_epochs_above_one_are_warned_about_naming_the_domains_and_the_trainers(tmp_path):
    result = cli("export", str(BEST), "--to", "megatron", *prefix_args(PREFIXES), "--out", str(tmp_path / "m.txt"))
    assert result.code == 0
    warning = result.err[result.err.index("warning:"):]
    assert "repeats math (1.25 epochs) at 1,000,000,000 tokens" in warning
    assert "general (" not in warning and "code (" not in warning  # 0.98 and 0.375 epochs: read once at most
    assert "Megatron-LM, Megatron-Bridge and NeMo" in warning and "MosaicML streaming" in warning
    assert "repeat data without a word" in warning
    assert "megatron: not capped" in warning
    result = cli("export", str(BEST), "--to", "olmo-core", *prefix_args(PREFIXES), *SETTINGS)
    assert "olmo-core: capped: OLMo-core refuses to build" in result.err
    # No warning when every domain is read at most once.
    once = tmp_path / "best_mixture.json"
    once.write_text(json.dumps({"data_mixture": {"a": 0.5, "b": 0.5}, "target_tokens": 100, "epochs": {"a": 1.0, "b": 0.5}}))
    result = cli("export", str(once), "--to", "json")
    assert result.code == 0 and "warning" not in result.err


def test_the_export_message_says_which_mixture_it_wrote_and_how_to_use_it(tmp_path):
    result = cli("export", str(BEST), "--to", "megatron", "--out", str(tmp_path / "m.txt"), *prefix_args(PREFIXES),
                 "--seq-length", "4096")
    assert result.code == 0
    assert "data mixture: token shares of the training data" in result.text and "unit: token share" in result.text
    assert "use: Megatron-LM: --data-args-path FILE --split 100,0,0 --train-samples 244141 --seq-length 4096" in result.err
    # To the terminal: stdout is the file alone, stderr says what it holds.
    result = cli("export", str(BEST), "--to", "json")
    assert json.loads(result.out) == dict(zip(DOMAINS, DATA.tolist()))
    assert "data mixture" in result.err
    result = cli("export", str(BEST), "--to", "json", "--weights", "components")
    assert json.loads(result.out) == dict(zip(DOMAINS, A.tolist())) and "component weights" in result.err


def test_render_without_options_is_lenient_for_the_command_backend():
    """The command backend renders without options: names stand in for missing paths and
    settings it does not pass are left out (strict ``export()`` and the CLI refuse both)."""
    best = BestMixture.read(BEST)
    olmo = yaml.safe_load(get_exporter("olmo-core").render(best, {}))
    assert [s["paths"] for s in olmo["source_list"]["sources"]] == [["general"], ["math"], ["code"]]
    assert "global_batch_size" not in olmo and olmo["requested_tokens"] == 10**9
    with pytest.raises(DemixError, match="no data path for domain"):
        export(BEST, "olmo-core", options=ExportOptions(global_batch_tokens=64))


def test_a_file_of_demix_before_0_2_is_refused_as_a_data_mixture(tmp_path):
    legacy = tmp_path / "best_mixture.json"
    # demix 0.1 wrote the component weights as "weights", labelled token shares.
    legacy.write_text(json.dumps({"weights": {"general": 0.5625, "math": 0.25, "code": 0.1875},
                                  "unit": "token share (fraction of training tokens drawn from each domain)",
                                  "target_tokens": 10**9, "epochs": {"general": 0.7, "math": 2.5, "code": 0.75}}))
    result = cli("export", str(legacy), "--to", "megatron", *prefix_args(PREFIXES))
    assert result.code == 1 and result.out == ""
    assert f"'{legacy}' was written by demix < 0.2" in result.text
    assert "component weights of the merged proxies, not the data mixture to train on" in result.text
    assert "rerun `demix search`" in result.text and "--weights components" in result.text
    assert "Traceback" not in result.text
    # Knowingly: its component weights, and no epochs of a data mixture (it recorded none).
    result = cli("export", str(legacy), "--to", "olmo-core", "--weights", "components", *prefix_args(PREFIXES), *SETTINGS)
    assert result.code == 0, result.text
    olmo = yaml.safe_load(result.out)["source_list"]["sources"]
    assert [s["target_ratio"] for s in olmo] == [0.5625, 0.25, 0.1875]
    assert [s["max_repetition_ratio"] for s in olmo] == [1.0] * 3  # not its 2.5 "epochs" of the weights
    assert "warning" not in result.err


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
    with pytest.raises(DemixError, match="--seq-length is 0"):
        ExportOptions(seq_length=0)
    with pytest.raises(DemixError, match="--repetition-headroom is -0.1"):
        ExportOptions(repetition_headroom=-0.1)
    no_docs = tmp_path / "best_mixture.json"
    no_docs.write_text(json.dumps({"data_mixture": {"a": 0.5, "b": 0.5}}))
    with pytest.raises(DemixError, match="mean_document_tokens"):
        export(no_docs, "hf-datasets", ["a=/a", "b=/b"])
    with pytest.raises(DemixError, match="the olmo-core format needs the token budget"):
        export(no_docs, "olmo-core", ["a=/a", "b=/b"], options=ExportOptions(global_batch_tokens=64))
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
