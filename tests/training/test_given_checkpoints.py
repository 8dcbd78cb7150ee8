"""The checkpoints a user hands to a run (``model.base_path``, ``train.components.paths``) are
checked before any work: there, safetensors only, loadable without their own code unless
``model.trust_remote_code``, compatible with the base. And where a model is loaded, a checkpoint
that needs its own code names the setting instead of transformers' traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from demix.checkpoints import check_loadable
from demix.errors import DemixError
from demix.training.model import load_checkpoint
from demix.training.roles import check_given_checkpoints
from helpers.models import save_tiny_checkpoint


def checkpoint(path, **config_changes):
    """A tiny HF checkpoint (vocabulary 400, like the training run's tokenizer) with config changes."""
    save_tiny_checkpoint(path, 400, heads=4, tie=False, embedding_scale=1.0)
    if config_changes:
        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**cfg, **config_changes}))
    return path


def test_missing_file_or_pickle_only_paths_name_the_setting(new_run, tmp_path):
    config, run = new_run()
    config.train.components.paths = {"math": str(tmp_path / "nowhere")}
    with pytest.raises(DemixError, match=r"train.components.paths.math is '.*nowhere', which does not exist") as err:
        check_given_checkpoints(config, run)
    assert "train.components.paths.math" in str(err.value.fix)
    (tmp_path / "a_file").write_text("x")
    config.train.components.paths = {"math": str(tmp_path / "a_file")}
    with pytest.raises(DemixError, match="which is not a directory"):
        check_given_checkpoints(config, run)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04never unpickled")
    config.train.components.paths = {"math": str(pickled)}
    with pytest.raises(DemixError, match=r"component 'math' \(train.components.paths.math\) .* has only pickled weights"):
        check_given_checkpoints(config, run)
    config.train.components.paths = {}
    config.model.base_path = str(tmp_path / "no_base")
    with pytest.raises(DemixError, match=r"model.base_path is '.*no_base', which does not exist"):
        check_given_checkpoints(config, run)
    config.model.base_path = None
    config.train.components.paths = {"poetry": str(pickled)}
    with pytest.raises(DemixError, match="unknown domain"):
        check_given_checkpoints(config, run)


def test_components_are_checked_against_the_base_once_there_is_one(new_run, tmp_path):
    config, run = new_run()
    wide = checkpoint(tmp_path / "wide", vocab_size=404)
    config.train.components.paths = {"math": str(wide)}
    check_given_checkpoints(config, run)  # no base yet: compatibility waits for it
    checkpoint(run.base)
    with pytest.raises(DemixError, match=r"component 'math' .*wide\) has config.json vocab_size=404"):
        check_given_checkpoints(config, run)
    config.train.components.paths = {"math": str(checkpoint(tmp_path / "fits"))}
    check_given_checkpoints(config, run)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"auto_map": {"AutoModelForCausalLM": "modeling.Custom"}}, r"needs its own modelling code .*auto_map"),
        ({"model_type": "demix_custom"}, r"model_type 'demix_custom', which transformers .* does not know"),
        ({"model_type": "t5"}, r"is a 't5' model, not a causal language model"),
    ],
)
def test_a_checkpoint_that_needs_its_own_code_is_refused_by_name(new_run, tmp_path, changes, message):
    config, run = new_run()
    custom = checkpoint(tmp_path / "custom", **changes)
    (custom / "modeling.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w')\n")
    config.model.base_path = str(custom)
    with pytest.raises(DemixError, match=message) as err:
        check_given_checkpoints(config, run)
    assert "base (model.base_path)" in err.value.what
    with pytest.raises(DemixError, match=message):
        load_checkpoint(custom)
    if "model_type" not in changes or changes["model_type"] == "demix_custom":
        assert "model.trust_remote_code" in str(err.value)
    assert not (tmp_path / "RAN").exists()
    check_loadable(custom, trust_remote_code=True)  # the user's choice; demix never makes it


def test_the_verbs_check_before_training(new_run, tmp_path):
    from demix.training import train_base, train_components, train_on_mixture

    config, run = new_run()
    config.model.base_path = str(checkpoint(tmp_path / "custom", model_type="demix_custom"))
    for call in (
        lambda: train_base(config, run, show_progress=False),
        lambda: train_components(config, run, show_progress=False),
        lambda: train_on_mixture(config, run, {"general": 1.0}, tmp_path / "ref", config.train.reference, "reference"),
    ):
        with pytest.raises(DemixError, match="demix_custom"):
            call()
    config.model.base_path = None
    config.train.components.paths = {"math": str(tmp_path / "nowhere")}
    with pytest.raises(DemixError, match="train.components.paths.math"):
        train_components(config, run, show_progress=False)  # was: exit 0, the domain skipped
    assert not run.base.exists() and not (tmp_path / "ref").exists()


def test_a_valid_given_base_and_component_pass(new_run, tmp_path):
    config, run = new_run()
    base = checkpoint(tmp_path / "base")
    comp = tmp_path / "math"
    shutil.copytree(base, comp)
    config.model.base_path = str(base)
    config.train.components.paths = {"math": str(comp)}
    check_given_checkpoints(config, run)
