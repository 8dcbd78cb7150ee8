"""Registered reference models (``fidelity.references``): models trained elsewhere on known data
mixtures, checked like registered components, used by the fidelity stage as ground truth
without training; their merged proxies are built at the component weights standing for each
data mixture. The stand-ins are copies of the run's base moved by small seeded noise (what a
model trained elsewhere from the same base looks like to demix: same layout, other weights)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from demix.config import RunConfig
from demix.errors import DemixError
from demix.evaluation import Evaluator
from demix.fidelity.files import read_mixtures
from demix.fidelity.stage import run_fidelity
from demix.mixtures import mixture_key
from demix.proxy_kind import REFERENCE
from demix.store import Store
from demix.training.roles import check_given_checkpoints
from helpers.models import save_perturbed_copies, save_tiny_checkpoint

# Data mixtures (token shares) of the registered models, and the component weights standing for
# each at general share 0.5: general a_g + 0.5 (1 - a_g), every other domain 0.5 a_d.
DATA = [
    {"general": 0.7, "math": 0.2, "code": 0.1},
    {"general": 0.6, "math": 0.1, "code": 0.3},
    {"general": 0.8, "math": 0.15, "code": 0.05},
]
WEIGHTS = [
    {"general": 0.4, "math": 0.4, "code": 0.2},
    {"general": 0.2, "math": 0.2, "code": 0.6},
    {"general": 0.6, "math": 0.3, "code": 0.1},
]
SETTINGS = {
    "fidelity.num_references": 0,
    "fidelity.trained_proxy_budgets": "[256]",
    "fidelity.bootstrap": 50,
    "train.components.tokens": 4 * 8 * 32,
    "search.rounds": "[4]",
    "evaluation.heldout_tokens": 512,
    "evaluation.batch_size": 8,
    "evaluation.device": "cpu",
    "train.heldout_tokens": 0,
}


def registered(paths) -> str:
    return json.dumps([{"mixture": d, "path": str(p)} for d, p in zip(DATA, paths)])


def stand_ins(base, root) -> list:
    """Three reference models 'trained elsewhere': the base moved by seeded noise, saved as safetensors."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True, dtype=torch.float32)
    dirs = {f"ref{i}": root / f"release/reference-{i}" for i in range(len(DATA))}

    def perturb(current, start, gen):
        return start + 0.01 * torch.randn(start.shape, generator=gen)

    save_perturbed_copies(model, dirs, perturb)
    return list(dirs.values())


@pytest.fixture(scope="module")
def fidelity_run(tmp_path_factory, shared_data, trained_base, tiny_config):
    from demix.rundir import RunDir
    from demix.training import train_components

    root = tmp_path_factory.mktemp("registered")
    (root / "data").symlink_to(shared_data / "data")
    (root / "tokenizer").symlink_to(shared_data / "tokenizer")
    run = RunDir(root)
    shutil.copytree(trained_base, run.base)
    refs = stand_ins(run.base, root)
    config: RunConfig = tiny_config(root, **SETTINGS, **{"fidelity.references": registered(refs)})
    train_components(config, run, show_progress=False)
    events: list = []
    result = run_fidelity(config, run, progress=False, on_event=lambda *e: events.append(e))
    return config, run, refs, result, events


def test_registered_models_are_the_ground_truth_without_training(fidelity_run):
    config, run, refs, result, events = fidelity_run
    assert [m.source for m in result.mixtures] == ["registered"] * 3
    assert [m.model_path for m in result.mixtures] == [str(p) for p in refs]
    for m, data, a in zip(result.mixtures, DATA, WEIGHTS):
        assert m.data_mixture == pytest.approx(data) and m.component_weights == pytest.approx(a, abs=1e-12)
    assert not run.models.joinpath("references").exists()  # nothing trained for them
    assert result.trained_now == 3  # the trained proxies (budget 256) only
    assert result.compute["references"]["train_tokens"] == 0  # none trained here
    assert ("reference", result.mixtures[0].data_key, "evaluated") in events

    evaluator = Evaluator.from_run(config, run, "cpu")
    from demix.training import load_checkpoint

    with Store(run.store_url) as store:
        for m, path in zip(result.mixtures, refs):
            row = store.get(m.data_mixture, REFERENCE)
            assert row is not None and row.mixture_key == mixture_key(DATA[refs.index(path)])
            assert row.provenance["registered"] is True and row.provenance["model_dir"] == str(path)
            # The scores are the registered model's own.
            want = evaluator.evaluate(load_checkpoint(path).eval()).benchmarks
            assert row.benchmarks == pytest.approx(want, rel=1e-6)
            assert result.scores[m.key]["reference"].benchmarks == pytest.approx(want, rel=1e-6)
    # Each registered model's weights are compared with its merged proxy's (the audit's proxy gap).
    assert len(result.audit.gaps) == 3 and not result.notes
    written = read_mixtures(run.fidelity_files.mixtures)
    assert [m.model_path for m in written] == [str(p) for p in refs]


def test_a_second_run_reuses_the_registered_scores(fidelity_run):
    config, run, refs, _, _ = fidelity_run
    events: list = []
    again = run_fidelity(config, run, progress=False, on_event=lambda *e: events.append(e))
    assert again.trained_now == 0 and again.evaluated_now == 0
    assert [e for e in events if e[0] == "reference"] == [("reference", m.data_key, "reused") for m in again.mixtures]


def test_an_unreachable_registered_model_names_itself_and_the_region(fidelity_run):
    config, run, refs, _, _ = fidelity_run
    bad = config.model_copy(deep=True)
    bad.fidelity.references[1].mixture = {"general": 0.3, "math": 0.4, "code": 0.3}
    with pytest.raises(DemixError, match=r"reference model fidelity.references\[1\] \('.*reference-1'\) was trained on the "
                       r"data mixture general 0.3, math 0.4, code 0.3, which merging cannot reach: .*general >= 0.5"):
        run_fidelity(bad, run, progress=False)
    bad.fidelity.references[1].mixture = dict(DATA[0])
    with pytest.raises(DemixError, match=r"is registered on the same data mixture as '.*reference-0'"):
        run_fidelity(bad, run, progress=False)
    bad.fidelity.references[1].mixture = {"general": 0.5, "poetry": 0.5}
    with pytest.raises(DemixError, match=r"fidelity.references\[1\] \('.*reference-1'\): .*poetry"):
        run_fidelity(bad, run, progress=False)


def test_registered_models_are_checked_like_registered_components(new_run, tmp_path):
    config, run = new_run()
    save_tiny_checkpoint(run.base, 400, heads=4, tie=False, embedding_scale=1.0)
    config.fidelity.references = [{"mixture": DATA[0], "path": str(tmp_path / "nowhere")}]  # type: ignore[list-item]
    with pytest.raises(DemixError, match=r"fidelity.references\[0\].path is '.*nowhere', which does not exist"):
        check_given_checkpoints(config, run)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04never unpickled")
    config.fidelity.references[0].path = str(pickled)
    with pytest.raises(DemixError, match=r"reference model \(fidelity.references\[0\].path\) .* has only pickled weights"):
        check_given_checkpoints(config, run)
    wide = tmp_path / "wide"
    save_tiny_checkpoint(wide, 404, heads=4, tie=False, embedding_scale=1.0)
    config.fidelity.references[0].path = str(wide)
    with pytest.raises(DemixError, match=r"reference model 'fidelity.references\[0\].path' .*vocab_size=404"):
        check_given_checkpoints(config, run)
    fits = tmp_path / "fits"
    save_tiny_checkpoint(fits, 400, heads=4, tie=False, seed=3, embedding_scale=1.0)
    config.fidelity.references[0].path = str(fits)
    check_given_checkpoints(config, run)


def test_a_registered_reference_is_a_strict_config_section(tiny_config, tmp_path):
    from pydantic import ValidationError

    with pytest.raises((DemixError, ValidationError), match="weights"):
        tiny_config(tmp_path, **{"fidelity.references": json.dumps([{"mixture": DATA[0], "path": "x", "weights": 1}])})
    config = tiny_config(tmp_path, **{"fidelity.references": json.dumps([{"mixture": DATA[0], "path": "x"}])})
    assert config.fidelity.references[0].path == "x" and config.fidelity.references[0].mixture == DATA[0]


def test_with_registered_references_and_no_trained_proxies_nothing_is_trained(fidelity_run, tmp_path):
    config, run, refs, first, _ = fidelity_run
    only_merged = config.model_copy(deep=True)
    only_merged.fidelity.train_proxies = False
    only_merged.fidelity.bootstrap = 20
    result = run_fidelity(only_merged, run, progress=False)
    assert result.trained_now == 0 and result.evaluated_now == 0  # every score is in the store already
    assert list(result.reports) == ["merged"] and not result.differences
    assert sorted(result.reports["merged"].macro) == sorted(first.reports["merged"].macro)
    assert result.reports["merged"].mixtures == first.reports["merged"].mixtures
