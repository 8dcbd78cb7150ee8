"""The smollm2 preset: it validates, points base and tokenizer at the converted directory, and a
missing conversion is one clear error naming `make smollm2` (before any stage runs)."""

from __future__ import annotations

import json

import pytest
import yaml

from demix.cli import main
from demix.config import config_from_dict
from demix.configs import PRESETS, load_preset, preset_path
from demix.errors import DemixError


def _fake_conversion(root) -> None:
    """A directory with a config.json where the preset expects the converted base (the preset
    loader checks only that it is there; the stages check the checkpoint itself)."""
    d = root / "models" / "smollm2-135m"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))


def test_preset_validates_and_uses_the_converted_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_conversion(tmp_path)
    assert "smollm2" in PRESETS
    cfg = load_preset("smollm2")
    assert cfg.model.base_path == cfg.tokenizer.path == "models/smollm2-135m"
    assert cfg.output_dir == "runs/smollm2"
    assert cfg.merge.dtype == "float32"  # bf16 matmuls are slow on CPUs without native bf16
    assert cfg.train.components.general_share == 0.5
    assert [d.name for d in cfg.data.domains] == ["general", "math", "math_problems", "code"]
    # The YAML itself is a valid RunConfig without the loader's check (pydantic, extra=forbid).
    raw = yaml.safe_load(preset_path("smollm2").read_text())
    assert config_from_dict(raw) == cfg


def test_missing_conversion_names_make_smollm2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DemixError, match="model.base_path = 'models/smollm2-135m', which is not there") as err:
        load_preset("smollm2")
    assert "make smollm2" in str(err.value) and "scripts/convert_smollm2.py" in str(err.value)
    # An override to a directory without the checkpoint is checked the same way.
    (tmp_path / "empty").mkdir()
    with pytest.raises(DemixError, match="'empty', which is not there"):
        load_preset("smollm2", ["model.base_path=empty"])


def test_demo_cli_without_the_conversion_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--preset", "smollm2"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "make smollm2" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing started
