"""Stage banners say what `demix run` really does with a user's checkpoints: a given
``model.base_path`` is used as it is (and checked), never described as a base to pretrain;
given components are named as given."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from demix.errors import DemixError
from demix.pipeline import _StageRunner, _train_stages, base_stage_description, components_stage_description
from helpers.models import save_tiny_checkpoint


def _run_train_stages(config, run) -> tuple[str, list]:
    console = Console(record=True, width=400, color_system=None)
    stage = _StageRunner(run, "demix run", console, 5)
    _train_stages(stage, config, run, show=False)
    return " ".join(console.export_text().split()), stage.done


def test_a_given_base_and_given_components_are_described_as_used_not_trained(new_run, tmp_path):
    config, run = new_run()
    base = tmp_path / "my-base"
    save_tiny_checkpoint(base, 400, heads=4, tie=False, embedding_scale=1.0)
    comps = {d: tmp_path / f"my-{d}" for d in config.data.domain_names}
    for p in comps.values():
        save_tiny_checkpoint(p, 400, heads=4, tie=False, embedding_scale=1.0, seed=1)
    config.model.base_path = str(base)
    config.train.components.paths = {d: str(p) for d, p in comps.items()}

    text, done = _run_train_stages(config, run)
    n = sum(p.numel() for p in save_tiny_checkpoint(tmp_path / "again", 400, heads=4, tie=False).parameters())
    assert f"use the given base checkpoint '{base}' (a llama model, {n:,} parameters, f32) (model.base_path) as it is" in text
    assert "checked against the run's tokenizer, not trained" in text
    assert "pretrain" not in text and "already done" not in text.split("train components")[0]
    assert "use the given component(s) of ['general', 'math', 'code'] (train.components.paths) as they are" in text
    assert "continue" not in text  # nothing is trained from the base here
    assert [t.stage for t in done] == ["train base", "train components"]
    assert done[0].skipped is False  # the stage ran its check


def test_the_base_stage_checks_the_given_base_it_describes(new_run, tmp_path):
    config, run = new_run()
    base = save_tiny_checkpoint(tmp_path / "small-vocab", 300, heads=4, embedding_scale=1.0)
    assert base is not None
    config.model.base_path = str(tmp_path / "small-vocab")
    with pytest.raises(DemixError, match=r"the run's tokenizer has 400 tokens but the base .*small-vocab' has vocab_size 300"):
        _run_train_stages(config, run)


def test_banners_of_a_run_that_trains_name_what_it_trains(new_run, tmp_path):
    config, run = new_run()
    assert base_stage_description(config).startswith("pretrain a llama base (32 wide, 2 layers) on 'general'")
    assert components_stage_description(config) == (
        "continue the base on each of 3 domain(s) ['general', 'math', 'code'] (50% general data) for "
        f"{config.train.components.tokens:,} tokens each, with the HF recipe"
    )
    given = tmp_path / "b"
    save_tiny_checkpoint(given, 400, heads=4, embedding_scale=1.0)
    (given / "config.json").write_text(json.dumps({**json.loads((given / "config.json").read_text()), "dtype": "float32"}))
    config.model.base_path = str(given)
    config.train.components.paths = {"code": str(given)}
    text = components_stage_description(config)
    assert text.startswith(f"continue the given base '{given}' on each of 2 domain(s) ['general', 'math']")
    assert text.endswith("use the given component(s) of ['code'] (train.components.paths) as they are, not trained")
