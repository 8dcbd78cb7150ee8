"""`demix fidelity --calibrate` (the merge-vs-data-mix check of the paper's Appendix D) on a
miniature run: real components at two budgets, real data-mixed models, real merges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from demix.errors import DemixError
from demix.fidelity.calibrate import Calibration, calibration_file, run_calibration
from demix.mixtures import mixture_key

SETTINGS = {
    "fidelity.calibrate.budgets": "[256, 1280]",
    "fidelity.calibrate.ratios": "[0.2, 0.5, 0.8]",
    "train.components.tokens": 1280,
    "evaluation.heldout_tokens": 512,
    "evaluation.batch_size": 8,
    "evaluation.device": "cpu",
    "train.heldout_tokens": 0,
}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, shared_data, trained_base, tiny_config):
    import shutil

    from demix.rundir import RunDir
    from demix.training import train_components

    root = tmp_path_factory.mktemp("calibrate")
    (root / "data").symlink_to(shared_data / "data")
    (root / "tokenizer").symlink_to(shared_data / "tokenizer")
    config = tiny_config(root, **SETTINGS)
    run = RunDir(root)
    shutil.copytree(trained_base, run.base)
    train_components(config, run, show_progress=False)
    steps: list[tuple[str, int, str]] = []
    result = run_calibration(config, run, progress=False, on_step=lambda *s: steps.append(s))
    return config, run, result, steps


def test_models_are_trained_where_needed_and_the_runs_components_reused(calibrated):
    config, run, result, steps = calibrated
    assert result.domains == ["math", "code"] and result.budgets == [256, 1280]
    root = run.fidelity / "calibrate"
    # At the run's own component budget its finished components are merged; at 256 new ones are trained.
    assert sorted(p.name for p in (root / "components@256").iterdir()) == ["code", "math"]
    assert not (root / "components@1280").exists()
    assert ("component math", 256, "trained") in steps
    for p in result.points:
        # The data-mixed model is trained on the data the merged proxy stands for: general 0.5,
        # math 0.5 r, code 0.5 (1 - r) (standard recipe at general share 0.5).
        assert p.data_mixture == pytest.approx({"general": 0.5, "math": 0.5 * p.ratio, "code": 0.5 * (1 - p.ratio)})
        model = root / f"mixed@{p.budget}" / mixture_key(p.data_mixture)
        assert (model / "demix.json").is_file()
        from demix.checkpoints import read_provenance

        prov = read_provenance(model)
        assert prov.tokens_seen == p.budget and prov.mixture == pytest.approx({k: v for k, v in p.data_mixture.items() if v})
    assert len(result.points) == 6


def test_rows_are_the_ratios_of_the_points(calibrated):
    config, run, result, _ = calibrated
    caps = ["general", "math", "code"]
    assert [(r.budget, r.capability) for r in result.rows] == [(b, c) for b in (256, 1280) for c in caps]
    for r in result.rows:
        pts = [p for p in result.points if p.budget == r.budget]
        per = [p.merged[r.capability] / p.mixed[r.capability] for p in pts]
        assert r.ratios == pytest.approx(per)
        assert r.consistency_ratio == pytest.approx(float(np.mean(per)))
        base = result.base[r.capability]
        gains = [(p.merged[r.capability] - base) / (p.mixed[r.capability] - base) for p in pts]
        assert r.gain_ratio == pytest.approx(float(np.mean(gains)))
        assert r.relative_delta == pytest.approx(float(np.mean(list(result.relative_delta[r.budget].values()))))
        # Held-out capabilities are compared as 2 ** -bits per byte: probabilities per byte in (0, 1).
        assert all(0 < p.merged[r.capability] < 1 and 0 < p.mixed[r.capability] < 1 for p in pts)
        assert -1 <= r.rank_rho <= 1 or math.isnan(r.rank_rho)
    # Longer component training moves the components further from the base.
    assert result.relative_delta[1280]["math"] > result.relative_delta[256]["math"] > 0


def test_relative_delta_is_the_audits_and_merged_scores_are_the_merges(calibrated):
    import torch

    from demix.evaluation import Evaluator
    from demix.fidelity.audit import audit_components
    from demix.merging import ProxyBuilder

    config, run, result, _ = calibrated
    audit = audit_components(run.base, {d: run.component(d) for d in ("math", "code")})
    assert result.relative_delta[1280] == pytest.approx({d: audit.deltas[d]["all"].relative for d in ("math", "code")})
    # The merged score at the run's budget is the run's own merge of those weights, scored again.
    p = next(p for p in result.points if p.budget == 1280)
    builder = ProxyBuilder.from_run(config, run, "cpu")
    with torch.no_grad():
        caps = Evaluator.from_run(config, run, "cpu").evaluate(builder.build({"general": 0.0, **p.component_weights})).capabilities
    assert p.merged == pytest.approx({c: 2.0 ** v for c, v in caps.items()}, rel=1e-6)


def test_file_reads_back_and_a_second_run_trains_nothing(calibrated):
    config, run, result, _ = calibrated
    again = Calibration.read(calibration_file(run))
    assert again.rows == result.rows and again.points == result.points
    steps: list[tuple[str, int, str]] = []
    second = run_calibration(config, run, progress=False, on_step=lambda *s: steps.append(s))
    assert not any(action == "trained" for _, _, action in steps)
    assert [r.consistency_ratio for r in second.rows] == pytest.approx([r.consistency_ratio for r in result.rows])


def test_cli_prints_the_table(calibrated, tmp_path, capsys, monkeypatch):
    import yaml

    from demix.cli import main
    from demix.cli._common import console

    monkeypatch.setattr(console, "width", 250)
    config, _, _, _ = calibrated
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    main(["fidelity", str(cfg), "--calibrate"])
    out = capsys.readouterr().out
    for text in ("merge vs data mix", "consistency", "gain ratio", "rel. delta", "1,280", "calibrate.json"):
        assert text in out, text


@pytest.mark.parametrize(("domains", "match"), [("[general, math]", "not a non-general domain"),
                                                 ("[math]", "merges two components"),
                                                 ("[math, math]", "merges two components")])
def test_bad_calibration_domains_are_refused(calibrated, domains, match):
    from demix.config import config_from_dict

    config, run, _, _ = calibrated
    bad = config_from_dict(config.model_dump(mode="json"), [f"fidelity.calibrate.domains={domains}"])
    with pytest.raises(DemixError, match=match):
        run_calibration(bad, run, progress=False)


def test_ratios_outside_the_open_interval_are_refused(calibrated):
    from demix.config import config_from_dict

    config, _, _, _ = calibrated
    with pytest.raises(DemixError, match="fidelity.calibrate.ratios"):
        config_from_dict(config.model_dump(mode="json"), ["fidelity.calibrate.ratios=[0.0, 0.5]"])
