"""The in-memory proxy builder: formula, equality with merged checkpoints on disk, reuse, mixtures."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from demix.checkpoints import weights_hash
from demix.errors import DemixError
from demix.merging import ComponentSet, ProxyBuilder, write_merged
from demix.merging.checkpoint import Checkpoint

MIX = {"general": 0.5, "math": 0.3, "code": 0.2}


def load_dir(path):
    ck = Checkpoint.open(path)
    return {n: ck.get(n) for n in ck.tensors}


@pytest.fixture(scope="module")
def components(family):
    base, comps = family
    return ComponentSet.load(base, comps)


def test_component_set_layout(components, family):
    base, comps = family
    assert components.domains == ["general", "math", "code"]
    sd = load_dir(comps["math"])
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(components.component_tensors(name)[1], sd[name])
    want = sd[name] - load_dir(base)[name]
    assert torch.equal(components.deltas(name)[1], want)
    assert len(components.base_flat) == 1  # one dtype group, one flat buffer


def test_linear_proxy_equals_formula_and_runs(components, family):
    builder = ProxyBuilder(components)
    model = builder.build(MIX)
    base_sd = load_dir(family[0])
    comp_sd = {d: load_dir(p) for d, p in family[1].items()}
    params = dict(model.named_parameters())
    for name in base_sd:
        want = base_sd[name].double() + sum(w * (comp_sd[d][name].double() - base_sd[name].double()) for d, w in MIX.items())
        assert (params[name].double() - want).abs().max().item() < 1e-6, name
    logits = model(torch.randint(0, 250, (2, 8))).logits
    assert logits.shape == (2, 8, 256) and torch.isfinite(logits).all()
    assert builder.mixture == MIX


def test_second_build_reuses_the_model(components):
    builder = ProxyBuilder(components)
    model = builder.build(MIX)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    emb = model.get_input_embeddings().weight.detach().clone()
    again = builder.build({"general": 0.0, "math": 1.0, "code": 0.0})
    assert again is model
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs  # written in place
    assert torch.equal(model.get_input_embeddings().weight, components.component_tensors("model.embed_tokens.weight")[1])
    assert not torch.equal(emb, model.get_input_embeddings().weight)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # ties survive


@pytest.mark.parametrize(
    "method,params",
    [("linear", {}), ("task_arithmetic", {"lambda": 0.5}), ("ties", {"density": 0.5}), ("dare_ties", {"density": 0.6}), ("multislerp", {})],
)
def test_proxy_equals_merged_checkpoint_on_disk(components, family, tmp_path, method, params):
    builder = ProxyBuilder(components, method, params)
    builder.build(MIX)
    out = write_merged(*family, MIX, tmp_path / "merged", method, params)
    disk = load_dir(out)
    for name, tensor in builder.state_dict().items():
        assert torch.equal(tensor, disk[name]), name
    prov = json.loads((out / "demix.json").read_text())
    assert prov["role"] == "merged" and prov["mixture"] == MIX and prov["method"] == method
    assert prov["base_hash"] == weights_hash(family[0]) and len(prov["base_hash"]) == 64
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_bf16_sharded_proxy_equals_disk_and_keeps_dtype(family_bf16, tmp_path):
    base, comps = family_bf16
    assert (base / "model.safetensors.index.json").is_file()
    builder = ProxyBuilder(ComponentSet.load(base, comps))
    model = builder.build(MIX)
    assert next(model.parameters()).dtype == torch.bfloat16
    out = write_merged(base, comps, MIX, tmp_path / "m", shard_size="40KB")
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*.safetensors"))) > 1
    disk = load_dir(out)
    for name, tensor in builder.state_dict().items():
        assert torch.equal(tensor, disk[name]), name
    # the written shards are plain safetensors files
    index = json.loads((out / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    assert load_file(out / first)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.vocab_size == 256 and next(reloaded.parameters()).dtype == torch.bfloat16


def test_fp32_proxy_of_bf16_components_accumulates_in_fp32(family_bf16):
    base, comps = family_bf16
    cs = ComponentSet.load(base, comps)
    model = ProxyBuilder(cs, dtype="float32").build(MIX)
    name = "model.layers.0.self_attn.q_proj.weight"
    want = sum(w * cs.component_tensors(name)[i].double() for i, w in enumerate(MIX.values()))
    got = dict(model.named_parameters())[name]
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max().item() < 1e-6


@pytest.mark.parametrize(
    "mixture,match",
    [
        ({}, "empty"),
        ({"general": -0.2, "math": 1.2}, "non-negative"),
        ({"general": 0.5, "math": 0.2}, "sum to 0.7"),
        ({"general": 0.5, "poetry": 0.5}, "unknown domain"),
        ({"general": float("nan"), "math": 1.0}, "finite"),
        ({"general": 0.0, "math": 0.0}, "all zero"),
    ],
)
def test_bad_mixtures_are_clear_errors(components, mixture, match):
    builder = ProxyBuilder(components)
    with pytest.raises(DemixError, match=match):
        builder.build(mixture)


def test_normalise_only_when_asked(components):
    builder = ProxyBuilder(components, normalize=True)
    builder.build({"general": 1.0, "math": 1.0})
    assert builder.mixture == {"general": 0.5, "math": 0.5, "code": 0.0}


def test_slerp_needs_two_components(components, family):
    with pytest.raises(DemixError, match="exactly 2 components"):
        ProxyBuilder(components, "slerp")
    base, comps = family
    two = ComponentSet.load(base, {"general": comps["general"], "math": comps["math"]})
    model = ProxyBuilder(two, "slerp").build({"general": 1.0, "math": 0.0})
    assert torch.equal(dict(model.named_parameters())["model.norm.weight"], two.component_tensors("model.norm.weight")[0])


def test_from_run_uses_config_paths(family, tmp_path):
    from demix.config import config_from_dict
    from demix.rundir import RunDir

    base, comps = family
    cfg = config_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "data": {"domains": [{"name": d, "source": "builtin:none"} for d in comps]},
            "model": {"base_path": str(base)},
            "train": {"components": {"paths": {d: str(p) for d, p in comps.items()}}},
            "merge": {"method": "ties", "params": {"density": 0.5}},
        }
    )
    builder = ProxyBuilder.from_run(cfg, RunDir(cfg.run_dir), device="cpu")
    assert builder.method.name == "ties" and builder.domains == list(comps)
    builder.build(MIX)
    components = cfg.train.components.model_copy(update={"paths": {}})
    cfg2 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"components": components})})
    with pytest.raises(DemixError, match="no component checkpoint for domain"):
        ProxyBuilder.from_run(cfg2, RunDir(cfg.run_dir), device="cpu")


@pytest.mark.gpu
def test_cuda_proxy_matches_cpu(components, family):
    cpu = ProxyBuilder(components, "linear").build(MIX)
    gpu_set = ComponentSet.load(*family, device="cuda")
    for method, params in [("linear", {}), ("ties", {"density": 0.5})]:
        gpu = ProxyBuilder(gpu_set, method, params).build(MIX)
        ref = ProxyBuilder(components, method, params).build(MIX)
        for (n, a), (_, b) in zip(ref.named_parameters(), gpu.named_parameters()):
            assert b.device.type == "cuda"
            assert (a - b.cpu()).abs().max().item() < 1e-5, (method, n)
    assert cpu is not None
