"""Bad checkpoints: each a DemixError naming the file or tensor, for both the in-memory
component set and the streamed writer; a failed write leaves no output behind."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from demix.errors import DemixError
from demix.merging import ComponentSet, write_merged

from .conftest import make_model

MIX = {"general": 0.5, "math": 0.3, "code": 0.2}


@pytest.fixture()
def family_copy(family, tmp_path):
    base, comps = family
    new_base = tmp_path / "base"
    shutil.copytree(base, new_base)
    new = {}
    for d, p in comps.items():
        new[d] = tmp_path / d
        shutil.copytree(p, new[d])
    return new_base, new


def both(base, comps, tmp_path, match):
    """The same error from ComponentSet.load and from write_merged (which writes nothing)."""
    with pytest.raises(DemixError, match=match):
        ComponentSet.load(base, comps)
    out = tmp_path / "out"
    with pytest.raises(DemixError, match=match):
        write_merged(base, comps, MIX, out)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_truncated_safetensors(family_copy, tmp_path):
    base, comps = family_copy
    f = comps["math"] / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    both(base, comps, tmp_path, r"(?s)component 'math' file .*model.safetensors' is not a readable safetensors file.*truncated")


def test_corrupt_header(family_copy, tmp_path):
    base, comps = family_copy
    f = base / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"not json at!"
    f.write_bytes(bytes(data))
    both(base, comps, tmp_path, r"base file .* is not a readable safetensors file")


def test_missing_shard(family_bf16, tmp_path):
    base, comps = family_bf16
    broken = tmp_path / "math"
    shutil.copytree(comps["math"], broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (broken / shard).unlink()
    both(base, {**comps, "math": broken}, tmp_path, rf"component 'math' shard .*{shard}' named by model.safetensors.index.json is missing")


def test_mismatched_shapes(family_copy, tmp_path):
    base, comps = family_copy
    f = comps["code"] / "model.safetensors"
    sd = load_file(f)
    sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(65, 32)
    save_file(sd, f, metadata={"format": "pt"})
    both(
        base,
        comps,
        tmp_path,
        r"component 'code' .* tensor 'model.layers.0.mlp.up_proj.weight' has shape \[65, 32\], the base has \[64, 32\]",
    )


def test_different_tensor_names(family_copy, tmp_path):
    base, comps = family_copy
    f = comps["code"] / "model.safetensors"
    sd = load_file(f)
    sd["model.layers.0.mlp.upper.weight"] = sd.pop("model.layers.0.mlp.up_proj.weight")
    save_file(sd, f, metadata={"format": "pt"})
    both(base, comps, tmp_path, r"component 'code' .* lacks tensor 'model.layers.0.mlp.up_proj.weight'")


def test_other_architecture_or_vocabulary(family, tmp_path):
    base, comps = family
    other = tmp_path / "other"
    make_model(7, vocab=300).save_pretrained(other)
    both(base, {**comps, "code": other}, tmp_path, r"component 'code' .* has config.json vocab_size=300 but the base .* has 256")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_component(family_copy, tmp_path, bad):
    base, comps = family_copy
    f = comps["general"] / "model.safetensors"
    sd = load_file(f)
    sd["model.norm.weight"][3] = bad
    save_file(sd, f, metadata={"format": "pt"})
    both(base, comps, tmp_path, r"tensor 'model.norm.weight' of component 'general' \(.*general\) holds 1 NaN/Inf")


def test_pickled_weights_are_refused(family, tmp_path):
    base, comps = family
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(comps["math"] / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    both(base, {**comps, "math": pickled}, tmp_path, r"has only pickled weights .*demix reads safetensors only")


def test_missing_directory_and_config(family, tmp_path):
    base, comps = family
    both(base, {**comps, "math": tmp_path / "nowhere"}, tmp_path, r"component 'math' directory .*nowhere' does not exist")
    noconf = tmp_path / "noconf"
    noconf.mkdir()
    shutil.copy(comps["math"] / "model.safetensors", noconf)
    both(base, {**comps, "math": noconf}, tmp_path, r"has no config.json")


def test_existing_output_needs_force(family, tmp_path):
    base, comps = family
    out = tmp_path / "m"
    write_merged(base, comps, MIX, out)
    with pytest.raises(DemixError, match="already exists"):
        write_merged(base, comps, MIX, out)
    write_merged(base, comps, {"general": 1.0}, out, force=True)
    assert json.loads((out / "demix.json").read_text())["mixture"]["general"] == 1.0
