"""The architectures users hand to demix as ``model.base_path``, each as a tiny random config:
components continued-pretrained from it by the HF recipe, the in-memory proxy equal to the
weighted sum of the components (compared in the model's own parameter space, through
transformers' loading, so MoE experts that transformers stacks into one tensor are checked
too), held-out bits per byte, ``demix merge`` to disk reloading to the same tensors, tied and
untied heads, non-parameter buffers (rotary frequencies, Gemma's embedding scale) left alone.

Hidden size 32, two layers, a 400-token vocabulary (the training tests' BPE): the whole file
runs in well under a minute on one core.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from demix.cli import main
from demix.config import RunConfig, config_from_dict
from demix.errors import DemixError
from demix.evaluation import Evaluator
from demix.merging import ProxyBuilder
from demix.rundir import RunDir
from demix.training import train_component

VOCAB = 400  # the shared training run's tokenizer
DOMAINS = ("general", "math")
MIXES = ({"general": 0.3, "math": 0.7}, {"general": 0.8, "math": 0.2})


def _common(tie: bool) -> dict[str, Any]:
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def _config(arch: str, tie: bool):
    """The transformers config of one tiny architecture (grouped-query attention where it has it)."""
    import transformers as T

    c = _common(tie)
    moe = dict(num_experts=4, num_experts_per_tok=2)
    makers: dict[str, Callable[[], Any]] = {
        "llama": lambda: T.LlamaConfig(**c),
        "qwen2": lambda: T.Qwen2Config(**c),
        "qwen3": lambda: T.Qwen3Config(head_dim=8, **c),
        "mistral": lambda: T.MistralConfig(**c),
        "gemma2": lambda: T.Gemma2Config(head_dim=8, **c),
        "gemma3": lambda: T.Gemma3TextConfig(head_dim=8, sliding_window=16, **c),
        "olmo2": lambda: T.Olmo2Config(**c),
        "phi3": lambda: T.Phi3Config(**c),
        "gpt_neox": lambda: T.GPTNeoXConfig(**{k: v for k, v in c.items() if k != "num_key_value_heads"}),
        "qwen3_moe": lambda: T.Qwen3MoeConfig(head_dim=8, moe_intermediate_size=16, **moe, **c),
        "olmoe": lambda: T.OlmoeConfig(**moe, **c),
        "mixtral": lambda: T.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **c),
    }
    return makers[arch]()


def save_base(path: Path, arch: str, tie: bool) -> Path:
    """A random fp32 checkpoint of ``arch`` at ``path``, built from a fixed seed."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch, tie), dtype=torch.float32)
    model.save_pretrained(path)
    return path


def run_config(root: Path, base: Path) -> dict[str, Any]:
    """Two domains, the given base, components of 3 steps x 4 windows of 32 tokens."""
    return {
        "output_dir": str(root),
        "data": {"domains": [{"name": d, "source": f"builtin:{d}"} for d in DOMAINS]},
        "model": {"base_path": str(base), "seq_len": 32},
        "train": {
            "components": {"tokens": 3 * 4 * 32, "lr": 0.003, "batch_size": 4, "warmup_fraction": 0.0},
            "device": "cpu",
            "heldout_tokens": 0,
        },
        "evaluation": {"device": "cpu", "heldout_tokens": 256, "batch_size": 8},
    }


def new_arch_run(shared_data: Path, root: Path, arch: str, tie: bool) -> tuple[RunConfig, RunDir, Path, dict[str, Any]]:
    root.mkdir()
    (root / "data").symlink_to(shared_data / "data")
    (root / "tokenizer").symlink_to(shared_data / "tokenizer")
    base = save_base(root.parent / f"base-{arch}", arch, tie)
    data = run_config(root, base)
    return config_from_dict(data), RunDir(root), base, data


def load(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, dtype=torch.float32).eval()


# Architecture, tied head. Llama both ways; Gemma ties by design; the others as their small
# public checkpoints ship (Qwen3 and SmolLM-style Llamas tie, Mistral, Phi3, OLMo, GPT-NeoX do not).
CASES = [
    ("llama", True),
    ("llama", False),
    ("qwen2", False),
    ("qwen3", True),
    ("mistral", False),
    ("gemma2", True),
    ("gemma3", True),
    ("olmo2", False),
    ("phi3", False),
    ("gpt_neox", False),
    ("qwen3_moe", False),
    ("olmoe", False),
    ("mixtral", False),
]


@pytest.mark.parametrize("arch, tie", CASES, ids=[f"{a}-{'tied' if t else 'untied'}" for a, t in CASES])
def test_architecture_trains_merges_and_round_trips(shared_data, tmp_path, arch, tie):
    config, run, base_path, data = new_arch_run(shared_data, tmp_path / "run", arch, tie)
    for d in DOMAINS:
        result = train_component(config, run, d, show_progress=False)
        assert result.provenance is not None and result.provenance.tokens_seen == 3 * 4 * 32

    base = load(base_path)
    comps = {d: load(run.component(d)) for d in DOMAINS}
    base_params = dict(base.named_parameters())
    comp_params = {d: dict(m.named_parameters()) for d, m in comps.items()}
    # The recipe really moved every component (else the weighted sum below proves nothing).
    for d in DOMAINS:
        moved = max(float((comp_params[d][n] - p).detach().abs().max()) for n, p in base_params.items())
        assert moved > 1e-4, (arch, d)

    builder = ProxyBuilder.from_run(config, run, device="cpu")
    evaluator = Evaluator.from_run(config, run, "cpu")
    fresh_buffers = {n: b.clone() for n, b in base.named_buffers()}
    for mix in MIXES:
        proxy = builder.build(mix)
        # The weighted sum, in fp64, of the components as transformers loads them.
        for name, p in proxy.named_parameters():
            want = sum(mix[d] * comp_params[d][name].double() for d in DOMAINS)
            assert torch.allclose(p.double(), want, rtol=0, atol=2e-6), (arch, name)
        for name, b in proxy.named_buffers():
            assert torch.equal(b, fresh_buffers[name]), (arch, name)
    if tie:
        assert proxy.get_output_embeddings().weight is proxy.get_input_embeddings().weight
    else:
        assert proxy.get_output_embeddings().weight.data_ptr() != proxy.get_input_embeddings().weight.data_ptr()

    # Held-out bits per byte of the resident proxy: finite, and those of the merged checkpoint below.
    scores = evaluator.evaluate(proxy)
    assert sorted(scores.benchmarks) == [f"heldout:{d}" for d in sorted(DOMAINS)]
    assert all(math.isfinite(v) and v > 0 for v in scores.benchmarks.values())

    cfg_file = tmp_path / "demix.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "merged"
    mix = MIXES[-1]
    main(["merge", str(cfg_file), "--mixture", ",".join(f"{d}={w}" for d, w in mix.items()), "--out", str(out), "-q"])
    disk = load(out)
    assert type(disk) is type(proxy)
    disk_state, proxy_state = disk.state_dict(), proxy.state_dict()
    assert disk_state.keys() == proxy_state.keys()
    for name, t in proxy_state.items():
        assert torch.equal(disk_state[name], t), (arch, name)
    assert evaluator.evaluate(disk).benchmarks == scores.benchmarks


def test_moe_experts_are_slices_of_the_stacked_parameter(shared_data, tmp_path):
    """transformers stacks an MoE layer's per-expert checkpoint tensors into one parameter; the
    builder writes each expert's merged tensor into its slice, so a model where only expert 1 of
    layer 0 moved changes only that slice of the proxy."""
    from transformers import AutoModelForCausalLM

    config, run, base_path, _ = new_arch_run(shared_data, tmp_path / "run", "qwen3_moe", False)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(base_path / "model.safetensors"))
    key = "model.layers.0.mlp.experts.1.up_proj.weight"
    assert key in tensors  # stored one tensor per expert ...
    assert key not in AutoModelForCausalLM.from_pretrained(str(base_path)).state_dict()  # ... loaded stacked
    for d in DOMAINS:
        comp = run.component(d)
        comp.mkdir(parents=True)
        (comp / "config.json").write_bytes((base_path / "config.json").read_bytes())
        moved = dict(tensors)
        moved[key] = tensors[key] + (1.0 if d == "math" else 0.0)
        save_file(moved, str(comp / "model.safetensors"), metadata={"format": "pt"})
    config.train.components.paths = {d: str(run.component(d)) for d in DOMAINS}
    builder = ProxyBuilder.from_run(config, run, device="cpu")
    assert key in builder.parameter_pieces()
    stacked, start = builder.parameter_pieces()[key]
    before = stacked.detach().clone()
    builder.build({"general": 0.75, "math": 0.25})
    changed = (stacked.detach() != before).reshape(-1).nonzero().reshape(-1)
    n = tensors[key].numel()
    assert changed.numel() == n and int(changed.min()) == start and int(changed.max()) == start + n - 1
    assert torch.allclose(stacked.detach().reshape(-1)[start : start + n] - before.reshape(-1)[start : start + n], torch.tensor(0.25))


def test_a_checkpoint_tensor_no_parameter_holds_names_the_architecture(shared_data, tmp_path):
    from safetensors.torch import load_file, save_file

    config, run, base_path, _ = new_arch_run(shared_data, tmp_path / "run", "olmo2", False)
    tensors = load_file(str(base_path / "model.safetensors"))
    tensors["model.layers.0.stray.weight"] = torch.zeros(4)
    for path in (base_path, *(run.component(d) for d in DOMAINS)):
        path.mkdir(parents=True, exist_ok=True)
        if path != base_path:
            (path / "config.json").write_bytes((base_path / "config.json").read_bytes())
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.train.components.paths = {d: str(run.component(d)) for d in DOMAINS}
    with pytest.raises(DemixError, match=r"'model.layers.0.stray.weight' is not a parameter of the Olmo2ForCausalLM \('olmo2'\)"):
        ProxyBuilder.from_run(config, run, device="cpu")


def test_merge_gradients_reach_the_stacked_moe_experts(shared_data, tmp_path):
    """The gradient through the merge follows checkpoint tensors transformers stacks into one
    parameter: with components that differ from the base only in one expert's tensor, the
    derivative along (math - general) matches a central difference of the proxy's summed nll
    (and would be exactly 0 if the stacked expert were skipped)."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    from demix.evaluation.gradient import heldout_nll_gradients

    config, run, base_path, _ = new_arch_run(shared_data, tmp_path / "run", "qwen3_moe", False)
    tensors = load_file(str(base_path / "model.safetensors"))
    key = "model.layers.0.mlp.experts.1.up_proj.weight"
    gen = torch.Generator().manual_seed(0)
    for d in DOMAINS:
        comp = run.component(d)
        comp.mkdir(parents=True)
        (comp / "config.json").write_bytes((base_path / "config.json").read_bytes())
        moved = dict(tensors)
        if d == "math":
            moved[key] = tensors[key] + 0.2 * torch.randn(tensors[key].shape, generator=gen)
        save_file(moved, str(comp / "model.safetensors"), metadata={"format": "pt"})
    config.train.components.paths = {d: str(run.component(d)) for d in DOMAINS}
    builder = ProxyBuilder.from_run(config, run, device="cpu")
    heldout = Evaluator.from_run(config, run, "cpu").heldout
    a = {"general": 0.5, "math": 0.5}
    grads = heldout_nll_gradients(builder, heldout, a)
    h = 0.05
    plus = heldout_nll_gradients(builder, heldout, {"general": 0.5 - h, "math": 0.5 + h})
    minus = heldout_nll_gradients(builder, heldout, {"general": 0.5 + h, "math": 0.5 - h})
    v = np.array([-1.0, 1.0])  # columns follow the components' domain order (general, math)
    for name, (_, g) in grads.items():
        fd = (plus[name][0] - minus[name][0]) / (2 * h)
        assert abs(fd) > 1e-3, (name, fd)  # the expert really changes the loss
        assert abs(g @ v - fd) <= 0.02 * abs(fd), (name, g @ v, fd)
