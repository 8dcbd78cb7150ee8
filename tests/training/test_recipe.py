import hashlib
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from demix.checkpoints import read_provenance, same_weights
from demix.errors import DemixError
from demix.packing import PackedTokens, split_prefix
from demix.tokenizer import load_tokenizer
from demix.training import (
    build_model,
    finished_components,
    heldout_loss,
    train_base,
    train_component,
    train_components,
    train_on_mixture,
)


def _heldout(model, run, domain, seq_len=32, tokens=2048):
    windows = PackedTokens(split_prefix(run.data, domain, "heldout")).sequences(seq_len, tokens)
    return heldout_loss(model, windows)


def test_base_training_lowers_heldout_loss_and_writes_a_plain_hf_checkpoint(new_run):
    config, run = new_run()
    fresh = build_model(config.model, load_tokenizer(run.tokenizer), seed=config.train.base.seed)
    before = _heldout(fresh, run, "general")

    result = train_base(config, run, show_progress=False)

    assert result.path == run.base and not result.skipped
    model = AutoModelForCausalLM.from_pretrained(run.base, use_safetensors=True)
    after = _heldout(model, run, "general")
    assert before > math.log(300)  # near-uniform over a 400-token vocabulary
    assert after < before - 0.7
    tok = AutoTokenizer.from_pretrained(run.base)
    assert len(tok) == model.config.vocab_size == len(load_tokenizer(run.tokenizer))
    assert model.config.tie_word_embeddings and model.config.intermediate_size == 4 * 32

    prov = read_provenance(run.base)
    on_disk = json.loads((run.base / "demix.json").read_text())
    assert prov.to_dict() == on_disk and prov == result.provenance
    assert set(on_disk) >= {
        "role", "domain", "mixture", "base_hash", "init", "tokens_seen", "schedule", "seed", "final_train_loss",
        "heldout_loss", "epochs", "resumed_from_step", "train_seconds", "tokens_per_second", "device",
        "demix_version", "created",
    }
    steps = config.train.base.tokens // (8 * 32)
    assert prov.role == "base" and prov.mixture == {"general": 1.0}
    assert prov.tokens_seen == steps * 8 * 32
    assert prov.schedule["steps"] == steps and prov.schedule["lr"] == 0.01
    assert prov.schedule["seq_len"] == 32 and prov.seed == 0
    assert prov.base_hash == hashlib.sha256(b"model.safetensors" + (run.base / "model.safetensors").read_bytes()).hexdigest()
    assert math.isfinite(prov.details["final_train_loss"]) and prov.details["final_train_loss"] < before
    assert prov.details["heldout_loss"]["general"]["after"] == pytest.approx(after, rel=1e-4)
    assert prov.details["heldout_loss"]["general"]["before"] == pytest.approx(before, rel=1e-4)
    # Only the finished model is left: no checkpoints, no temp dir, no pickles.
    names = {p.name for p in run.base.iterdir()}
    assert "_checkpoints" not in names and "training_args.bin" not in names
    assert not list(run.models.glob(".*"))


def test_component_learns_its_domain_and_records_its_base(run_with_base):
    config, run = run_with_base()
    base = AutoModelForCausalLM.from_pretrained(run.base, use_safetensors=True)
    base_math = _heldout(base, run, "math")

    result = train_component(config, run, "math", show_progress=False)

    comp = AutoModelForCausalLM.from_pretrained(result.path, use_safetensors=True)
    assert _heldout(comp, run, "math") < base_math - 0.5
    prov = result.provenance
    assert prov.role == "component" and prov.domain == "math"
    assert prov.mixture == {"general": 0.5, "math": 0.5}
    assert same_weights(prov.base_hash, read_provenance(run.base).base_hash)
    assert prov.init == str(run.base)
    assert prov.tokens_seen == 20 * 8 * 32
    # same architecture and tensor names as the base: ready to merge
    assert load_file(result.path / "model.safetensors").keys() == load_file(run.base / "model.safetensors").keys()


def test_finished_models_are_not_retrained(run_with_base):
    config, run = run_with_base()
    first = train_components(config, run, ["code"], show_progress=False)["code"]
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    again = train_components(config, run, ["code"], show_progress=False)["code"]
    assert again.skipped and again.provenance == first.provenance
    assert (first.path / "model.safetensors").stat().st_mtime_ns == stamp
    assert train_base(config, run, show_progress=False).skipped


class _Interrupt(Exception):
    pass


class _StopAfterFirstSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise _Interrupt(f"killed after step {state.global_step}")


def test_interrupted_training_resumes_from_its_last_checkpoint(run_with_base):
    overrides = {"train.components.save_every_steps": 6}
    config, run = run_with_base("interrupted", **overrides)
    with pytest.raises(_Interrupt):
        train_component(config, run, "math", show_progress=False, callbacks=[_StopAfterFirstSave()])
    out = run.component("math")
    assert not (out / "demix.json").exists()
    assert (out / "_checkpoints" / "checkpoint-6" / "trainer_state.json").is_file()

    resumed = train_component(config, run, "math", show_progress=False)

    assert resumed.provenance.details["resumed_from_step"] == 6
    assert resumed.provenance.tokens_seen == 20 * 8 * 32
    assert not (out / "_checkpoints").exists()
    # The resumed model equals one trained without interruption (same data order, same optimizer state).
    config2, run2 = run_with_base("straight", **overrides)
    straight = train_component(config2, run2, "math", show_progress=False)
    a = load_file(resumed.path / "model.safetensors")
    b = load_file(straight.path / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_checkpoints_of_another_recipe_are_discarded(run_with_base):
    config, run = run_with_base(**{"train.components.save_every_steps": 6})
    with pytest.raises(_Interrupt):
        train_component(config, run, "code", show_progress=False, callbacks=[_StopAfterFirstSave()])
    config.train.components.lr = 0.002
    result = train_component(config, run, "code", show_progress=False)
    assert result.provenance.details["resumed_from_step"] is None
    assert result.provenance.schedule["lr"] == 0.002


class _RecordLR(TrainerCallback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        self.lrs.append(lr_scheduler.get_last_lr()[0])


@pytest.mark.parametrize("schedule", ["wsd", "linear"])
def test_trainer_follows_the_configured_schedule(run_with_base, schedule):
    config, run = run_with_base(
        **{"train.reference.schedule": schedule, "train.reference.min_lr_ratio": 0.25, "train.reference.warmup_fraction": 0.2}
    )
    rec = _RecordLR()
    train_on_mixture(
        config, run, {"general": 0.5, "code": 0.5}, run.reference("r"), config.train.reference, "reference",
        show_progress=False, callbacks=[rec],
    )
    lr = config.train.reference.lr
    assert len(rec.lrs) == 10
    # get_last_lr after step s is the rate for step s + 1: warmup over 2 steps, then the decay.
    assert max(rec.lrs) == pytest.approx(lr)
    assert rec.lrs[-2] == pytest.approx(0.25 * lr)
    if schedule == "wsd":
        assert rec.lrs[1:7] == pytest.approx([lr] * 6)


def test_reference_and_trained_proxy_on_a_mixture(run_with_base):
    config, run = run_with_base()
    mixture = {"general": 0.6, "math": 0.1, "code": 0.3}
    ref = train_on_mixture(config, run, mixture, run.reference("m1"), config.train.reference, "reference", show_progress=False)
    assert ref.provenance.role == "reference"
    assert ref.provenance.mixture == pytest.approx(mixture)
    assert ref.provenance.tokens_seen == 10 * 8 * 32
    assert set(ref.provenance.details["heldout_loss"]) == set(mixture)
    proxy = train_on_mixture(
        config, run, {"code": 1.0}, run.trained_proxy("p1"), config.train.trained_proxy, "trained_proxy", show_progress=False
    )
    assert proxy.provenance.role == "trained_proxy" and proxy.provenance.tokens_seen == 5 * 8 * 32
    with pytest.raises(DemixError, match="sum to"):
        train_on_mixture(config, run, {"general": 0.6}, run.reference("bad"), config.train.reference, "reference")
    with pytest.raises(DemixError, match="unknown domain"):
        train_on_mixture(config, run, {"poetry": 1.0}, run.reference("bad"), config.train.reference, "reference")
    with pytest.raises(DemixError, match="role"):
        train_on_mixture(config, run, mixture, run.reference("bad"), config.train.reference, "merged")


def test_component_before_base_is_a_clear_error(new_run):
    config, run = new_run()
    with pytest.raises(DemixError, match="demix train base"):
        train_component(config, run, "math", show_progress=False)


def test_budget_below_one_step_is_a_clear_error(new_run):
    config, run = new_run(**{"train.base.tokens": 100})
    with pytest.raises(DemixError, match="less than one step"):
        train_base(config, run, show_progress=False)


# --------------------------------------------------------------------------- external checkpoints


def _save_model(path, config, run, **model_overrides):
    model_cfg = config.model.model_copy(update=model_overrides)
    model = build_model(model_cfg, load_tokenizer(run.tokenizer), seed=1)
    model.save_pretrained(path)
    return model


def test_external_components_are_registered_after_checks(run_with_base, tmp_path):
    config, run = run_with_base()
    # A component trained elsewhere: same architecture and shapes as the base.
    ext = tmp_path / "ext_code"
    _save_model(ext, config, run)
    config.train.components.paths = {"code": str(ext)}
    done = train_components(config, run, show_progress=False)
    assert set(done) == {"general", "math"}
    dirs = finished_components(config, run)
    assert dirs == {"general": run.component("general"), "math": run.component("math"), "code": ext}
    with pytest.raises(DemixError, match="external"):
        train_component(config, run, "code")


def test_component_of_another_architecture_is_rejected(run_with_base, tmp_path):
    config, run = run_with_base()
    ext = tmp_path / "qwen"
    _save_model(ext, config, run, architecture="qwen3")
    config.train.components.paths = {"math": str(ext)}
    with pytest.raises(DemixError, match="component 'math' .* has config.json model_type='qwen3' but the base .* has 'llama'"):
        finished_components(config, run)


def test_component_with_other_shapes_names_the_tensor(run_with_base, tmp_path):
    config, run = run_with_base()
    ext = tmp_path / "wide"
    _save_model(ext, config, run, intermediate_size=64)
    config.train.components.paths = {"math": str(ext)}
    with pytest.raises(DemixError, match=r"tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight' has shape \[\d+, \d+\]") as err:
        finished_components(config, run)
    assert err.value.fix


def test_component_with_other_vocabulary_is_rejected(run_with_base, tmp_path):
    config, run = run_with_base()
    ext = tmp_path / "vocab"
    model = _save_model(ext, config, run)
    model.resize_token_embeddings(512)
    model.save_pretrained(ext)
    config.train.components.paths = {"math": str(ext)}
    with pytest.raises(DemixError, match="vocab_size=512 but the base .* has 400"):
        finished_components(config, run)


def test_given_base_with_a_smaller_vocabulary_is_rejected(new_run, tmp_path):
    config, run = new_run()
    small = tmp_path / "small_vocab"
    model = _save_model(small, config, run)
    model.resize_token_embeddings(300)
    model.save_pretrained(small)
    config.model.base_path = str(small)
    with pytest.raises(DemixError, match="400 tokens but the base .* has vocab_size 300"):
        train_base(config, run, show_progress=False)
    with pytest.raises(DemixError, match="400 tokens but the base .* has vocab_size 300"):
        train_component(config, run, "math", show_progress=False)


def test_given_base_is_used_from_safetensors_and_pickles_are_refused(new_run, tmp_path):
    config, run = new_run()
    given = tmp_path / "given_base"
    _save_model(given, config, run)
    config.model.base_path = str(given)
    given_result = train_base(config, run, show_progress=False)
    assert given_result.skipped and given_result.provenance is None  # external, no demix.json
    comp = train_component(config, run, "math", show_progress=False)
    assert comp.provenance.base_hash == hashlib.sha256(
        b"model.safetensors" + (given / "model.safetensors").read_bytes()
    ).hexdigest()

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((given / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    config.model.base_path = str(pickled)
    with pytest.raises(DemixError, match="has only pickled weights"):
        train_base(config, run, show_progress=False)


def test_truncated_external_weights_are_a_clear_error(run_with_base, tmp_path):
    config, run = run_with_base()
    ext = tmp_path / "trunc"
    _save_model(ext, config, run)
    data = (ext / "model.safetensors").read_bytes()
    (ext / "model.safetensors").write_bytes(data[:100])
    config.train.components.paths = {"math": str(ext)}
    with pytest.raises(DemixError, match="truncated or corrupt"):
        finished_components(config, run)


def test_heldout_loss_matches_a_direct_computation(new_run):
    config, run = new_run()
    model = build_model(config.model, load_tokenizer(run.tokenizer), seed=0)
    windows = PackedTokens(split_prefix(run.data, "code", "heldout")).sequences(32, 512)
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(windows))
        direct = torch.nn.functional.cross_entropy(
            model(input_ids=x[:, :-1]).logits.reshape(-1, model.config.vocab_size), x[:, 1:].reshape(-1)
        )
    assert heldout_loss(model, windows, batch_size=3) == pytest.approx(float(direct), rel=1e-5)


def test_precision_and_device_errors_name_the_fix(new_run):
    config, run = new_run(**{"train.base.precision": "fp16"})
    with pytest.raises(DemixError, match="fp16 needs a GPU"):
        train_base(config, run, show_progress=False)
    if not torch.cuda.is_available():
        config, run = new_run("nogpu", **{"train.device": "cuda"})
        with pytest.raises(DemixError, match="no CUDA device"):
            train_base(config, run, show_progress=False)


def test_a_model_written_but_not_renamed_is_recovered_not_retrained(run_with_base):
    config, run = run_with_base(**{"train.heldout_tokens": 0})
    done = train_component(config, run, "code", show_progress=False)
    assert done.provenance.details["heldout_loss"] is None
    hidden = run.component("code").parent / ".code.final"
    run.component("code").rename(hidden)  # as if killed between the final write and the rename
    again = train_component(config, run, "code", show_progress=False)
    assert again.skipped and again.provenance == done.provenance
    assert not hidden.exists() and (run.component("code") / "model.safetensors").is_file()
