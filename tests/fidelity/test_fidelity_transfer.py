"""Transfer targets (fidelity.transfer: held-out loss on a corpus no component trains on) and the
cross-validated single-linear-rule baseline, on a miniature run with real training, merging and
evaluation; and the pieces (leave-one-out rule, group macros, paired differences over a group)
on numbers checked by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from demix.errors import DemixError
from demix.fidelity.files import FidelityResults
from demix.fidelity.metrics import compare, paired_difference
from demix.fidelity.stage import run_fidelity
from demix.fidelity.statistics import Target
from demix.fidelity.targets import LINEAR_RULE, OWN_WEIGHT, loo_single_rule

SETTINGS = {
    "fidelity.num_references": 4,
    "fidelity.trained_proxy_budgets": "[256]",
    "train.reference.tokens": 1024,
    "fidelity.bootstrap": 200,
    "search.rounds": "[6]",
    "evaluation.heldout_tokens": 512,
    "evaluation.batch_size": 8,
    "evaluation.device": "cpu",
    "train.heldout_tokens": 0,
}


def _transfer_text() -> list[str]:
    """Prose no domain of the tiny run holds: docstrings of modules its general domain leaves out."""
    import difflib
    import heapq
    import inspect
    import shutil
    import zipfile

    docs = []
    for mod in (difflib, heapq, shutil, zipfile):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
            if doc and len(doc) > 80:
                docs.append(doc)
    return sorted(set(docs))


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory, shared_data, trained_base, tiny_config):
    import shutil

    from demix.rundir import RunDir
    from demix.training import train_components

    root = tmp_path_factory.mktemp("transfer")
    (root / "data").symlink_to(shared_data / "data")
    (root / "tokenizer").symlink_to(shared_data / "tokenizer")
    corpus = root / "prose2.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in _transfer_text()))
    transfer = f"[{{name: prose2, source: {corpus}, license: PSF-2.0}}]"
    config = tiny_config(root, **SETTINGS, **{"fidelity.transfer": transfer})
    run = RunDir(root)
    shutil.copytree(trained_base, run.base)
    train_components(config, run, show_progress=False)
    result = run_fidelity(config, run, progress=False)
    return config, run, result


def test_transfer_corpus_is_a_target_of_every_model_and_in_its_own_group(transfer_run):
    config, run, result = transfer_run
    saved = FidelityResults.read(run.fidelity_files.results)
    assert saved.groups == {"own": ["general", "math", "code"], "transfer": ["prose2"]}
    for kind in ("merged", "trained@256"):
        rep = saved.reports[kind]
        assert rep.targets["prose2"].capability and rep.targets["prose2"].ratio_scale
        assert rep.targets["benchmark:heldout:prose2"].higher_is_better is False
        assert set(rep.group_macro) == {"own", "transfer"}
        # The transfer macro is the mean over its only capability.
        assert rep.group_macro["transfer"]["spearman"].value == pytest.approx(rep.targets["prose2"].spearman.value)
        assert rep.group_macro["own"]["spearman"].over == ["general", "math", "code"]
    # Scores: capability prose2 = 2 ** -(bits per byte), like the run's own held-out capabilities.
    for key, per in result.scores.items():
        for s in per.values():
            bpb = s.benchmarks["heldout:prose2"]
            assert 0 < bpb < 20 and s.capabilities["prose2"] == pytest.approx(-bpb)
        pair = result.reports["merged"].targets["prose2"].scores[key]
        assert pair == pytest.approx([2 ** -per["reference"].benchmarks["heldout:prose2"],
                                      2 ** -per["merged"].benchmarks["heldout:prose2"]])
    # One stored value per model: 4 mixtures x (reference, trained@256, merged); the references and
    # merged proxies all differ (a 1-step trained proxy can still equal another at warm-up).
    rows = json.loads((run.fidelity / "transfer_scores.json").read_text())["rows"]
    assert len(rows) == 12
    assert len({tuple(r["bits_per_byte"].values()) for k, r in rows.items() if not k.startswith("trained")}) == 8


def test_transfer_values_are_bits_per_byte_of_the_corpus_first_tokens(transfer_run):
    """Recomputed by hand for one reference model: nll over the first heldout_tokens of the
    corpus, divided by ln 2 x the UTF-8 bytes of the scored targets."""
    import torch

    from demix.packing import PackedTokens
    from demix.tokenizer import load_tokenizer
    from demix.training import load_checkpoint

    config, run, result = transfer_run
    m = result.mixtures[0]
    tok = load_tokenizer(run.tokenizer)
    packed = PackedTokens(run.fidelity / "transfer" / "prose2" / "heldout")
    assert packed.meta["transfer"] == "prose2" and packed.meta["license"] == "PSF-2.0"
    first = tok(_transfer_text()[0], add_special_tokens=False)["input_ids"]
    assert list(packed.document(0)[:-1]) == first  # the corpus' first document, in order
    windows = packed.sequences(config.model.seq_len, max_tokens=config.evaluation.heldout_tokens)
    model = load_checkpoint(run.reference(m.data_key), False, torch.float32).eval()
    special = set(tok.all_special_ids)
    nll, nbytes = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logits = model(input_ids=torch.tensor(w[None, :-1])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            for pos, t in enumerate(w[1:]):
                if int(t) in special:
                    continue
                nll -= float(logp[pos, int(t)])
                nbytes += len(tok.convert_ids_to_tokens(int(t)))  # byte-level BPE: one char per byte
    assert result.scores[m.key]["reference"].benchmarks["heldout:prose2"] == pytest.approx(
        nll / (math.log(2) * nbytes), rel=1e-5)


def test_second_run_scores_no_transfer_target_again(transfer_run):
    config, run, _ = transfer_run
    path = run.fidelity / "transfer_scores.json"
    before = path.stat().st_mtime_ns
    again = run_fidelity(config, run, progress=False)
    assert again.trained_now == 0 and again.evaluated_now == 0
    assert path.stat().st_mtime_ns == before  # nothing was evaluated, so nothing was written


def test_linear_rule_baseline_is_reported_for_every_target(transfer_run):
    config, run, result = transfer_run
    rule = result.baselines[LINEAR_RULE]
    merged = result.reports["merged"]
    assert set(rule.targets) == set(merged.targets)
    assert not any(t.crr.defined for t in rule.targets.values())  # fitted to the level: no recovery rate
    assert set(rule.group_macro) == {"own", "transfer"}
    assert set(result.baselines[OWN_WEIGHT].targets) == {"general", "math", "code"}
    # Its scores are the leave-one-out predictions of the best single rule of the data mixture.
    keys = sorted(merged.targets["prose2"].scores)
    data = {m.key: m.data_mixture for m in result.mixtures}
    x = np.array([[data[k][d] for d in config.data.domain_names] for k in keys])
    y = np.array([merged.targets["prose2"].scores[k][0] for k in keys])
    pred, _ = loo_single_rule(x, y)
    assert [rule.targets["prose2"].scores[k][1] for k in keys] == pytest.approx(list(pred))
    assert result.rules["prose2"].split(" ")[0][0] in "+-"
    # merged minus each baseline and each trained kind, per group, in fidelity.json.
    assert set(result.group_differences) == {"trained@256", OWN_WEIGHT, LINEAR_RULE}
    assert set(result.group_differences[OWN_WEIGHT]) == {"own"}
    d = result.group_differences[LINEAR_RULE]["transfer"]
    assert d.value == pytest.approx(merged.targets["prose2"].spearman.value - rule.targets["prose2"].spearman.value)
    row = FidelityResults.read(run.fidelity_files.results).row("trained@256")
    assert row is not None and set(row.groups) == {"own", "transfer"}
    assert row.groups["transfer"]["merged_minus_this"].value == pytest.approx(
        result.group_differences["trained@256"]["transfer"].value)


def test_cli_prints_group_macros_and_the_linear_rule(transfer_run, tmp_path, capsys, monkeypatch):
    import yaml

    from demix.cli import main
    from demix.cli._common import console

    monkeypatch.setattr(console, "width", 250)  # the tables' cells unwrapped

    config, _, _ = transfer_run
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    main(["fidelity", str(cfg)])
    out = capsys.readouterr().out
    for text in ("macro own", "macro transfer", "linear rule", "linear-rule baseline (transfer targets)",
                 "merged-this (transfer)"):
        assert text in out, text


@pytest.mark.parametrize(("entry", "match"), [
    ("{name: math, source: /nowhere.jsonl}", "is one of data.domains"),
    ("{name: more_code, source: 'builtin:code'}", "the source of domain"),
    ("{name: heldout:x, source: 'builtin:math_problems'}", "not allowed"),
])
def test_transfer_corpus_that_a_component_trains_on_is_refused(transfer_run, entry, match):
    from demix.config import config_from_dict
    from demix.fidelity.transfer import check_transfer

    config, _, _ = transfer_run
    with pytest.raises(DemixError, match=match):
        check_transfer(config_from_dict(config.model_dump(mode="json"), [f"fidelity.transfer=[{entry}]"]))


def test_loo_single_rule_picks_the_column_that_explains_the_target():
    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.ones(3), size=10)
    y = 1.0 - 3.0 * x[:, 2] + 0.01 * rng.standard_normal(10)
    pred, chosen = loo_single_rule(x, y)
    assert chosen == [2] * 10
    for i in range(10):  # each prediction is the fit without point i, written out with numpy
        keep = np.arange(10) != i
        b, a = np.polyfit(x[keep, 2], y[keep], 1)
        assert pred[i] == pytest.approx(a + b * x[i, 2])
    # No column varies: the training mean is predicted, and -1 says so.
    flat, cols = loo_single_rule(np.ones((4, 2)), np.array([1.0, 2.0, 3.0, 6.0]))
    assert cols == [-1] * 4 and flat[3] == pytest.approx(2.0)


def test_group_macros_and_paired_differences_over_a_group():
    ref = {f"m{i}": {"a": float(i), "b": float(i % 3), "c": float(-i)} for i in range(8)}
    good = {k: {"a": v["a"], "b": v["b"], "c": v["c"]} for k, v in ref.items()}
    bad = {k: {"a": v["a"], "b": -v["b"], "c": -v["c"]} for k, v in ref.items()}
    targets = [Target("a", capability=True), Target("b", capability=True), Target("c", capability=True)]
    groups = {"own": ["a"], "transfer": ["b", "c"], "empty": ["z"]}
    g = compare(ref, good, targets, bootstrap=100, groups=groups)
    b = compare(ref, bad, targets, bootstrap=100, groups=groups)
    assert set(g.group_macro) == {"own", "transfer"}  # a group with no target is left out
    assert g.group_macro["transfer"]["spearman"].value == pytest.approx(1.0)
    assert b.group_macro["transfer"]["spearman"].value == pytest.approx(-1.0)
    assert b.group_macro["own"]["spearman"].value == pytest.approx(1.0)
    assert b.macro["spearman"].value == pytest.approx(-1 / 3)
    assert paired_difference(g, b, over=["b", "c"]).value == pytest.approx(2.0)
    assert paired_difference(g, b, over=["a"]).value == pytest.approx(0.0)
    assert paired_difference(g, b).value == pytest.approx(4 / 3)
    again = type(g).from_dict(json.loads(g.to_json()))
    assert again.group_macro["transfer"]["spearman"].value == pytest.approx(1.0)
