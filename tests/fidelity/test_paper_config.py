"""The config for the DeMix paper's public release (src/demix/configs/paper.yaml): it loads as a
run config, and, pointed at stand-in checkpoints laid out like the release (the component
folders of its merge script with sharded safetensors, reference folders named as the mixtures
of sampled_mixture.json, one mixture more than folders), its given checkpoints pass the checks,
the 16 registered references are the fidelity stage's mixtures, and a proxy merges. The
stand-ins are tiny Qwen3 models: nothing is downloaded."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from demix.config import config_from_dict
from demix.fidelity.references import reference_mixtures, registered_references
from demix.rundir import RunDir
from demix.training.roles import check_given_checkpoints, mixture_map

RELEASE = "/data/DeMix_Corpora"
DOMAINS = ["general_target", "math_very_high", "math_high", "math_medium", "code_very_high", "code_high", "code_medium"]


def paper_text() -> str:
    return (resources.files("demix.configs") / "paper.yaml").read_text()


def paper_config(root: Path | None = None, **dotted: object):
    import yaml

    text = paper_text()
    if root is not None:
        text = text.replace(RELEASE, str(root))
    return config_from_dict(yaml.safe_load(text), [f"{k}={v}" for k, v in dotted.items()])


def test_the_paper_config_loads_as_a_run_config():
    config = paper_config()
    assert config.data.domain_names == DOMAINS and config.data.general_domain == "general_target"
    assert sorted(config.train.components.paths) == sorted(DOMAINS)
    assert all(p.endswith("/checkpoint-7500") for p in config.train.components.paths.values())
    assert config.model.base_path == config.train.components.paths["general_target"]
    assert [b.task for b in config.evaluation.benchmarks] == [
        "arc_easy", "hellaswag", "piqa", "siqa", "winogrande", "demix_humaneval", "gsm8k", "minerva_math",
    ]
    assert [c.name for c in config.evaluation.capabilities] == ["general", "code", "math"]
    assert list(config.search.rounds) == [64, 32, 16] and config.search.top_k == 128
    f = config.fidelity
    assert f.pairing == "component_weights" and f.num_references == 0 and not f.train_proxies
    assert f.reference_sets[0].mixtures_file.endswith("reference_models/sampled_mixture.json")


def stand_in_release(root: Path, n_mixtures: int = 17, n_folders: int = 16) -> dict[str, dict[str, float]]:
    """Components and reference models laid out like the release (tiny Qwen3, sharded bf16)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}

    def save(path: Path, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_((start[n].float() + 0.01 * torch.randn(p.shape, generator=gen)).to(p.dtype))
        model.save_pretrained(path, max_shard_size="20KB")  # several shards + index, like the release

    for i, d in enumerate(DOMAINS):
        save(root / f"component_models/Qwen3-1.7B-Mid_pt_pure_mix_{d}/checkpoint-7500", seed=i)
    rng = np.random.default_rng(0)
    mixtures = {}
    for i in range(n_mixtures):
        w = rng.dirichlet(np.ones(len(DOMAINS)))
        mixtures[f"mix_{i}"] = {d: float(x) for d, x in zip(DOMAINS, w / w.sum())}
        if i < n_folders:
            save(root / f"reference_models/mix_{i}", seed=100 + i)
    (root / "reference_models/sampled_mixture.json").write_text(json.dumps(mixtures))
    return mixtures


def test_the_paper_config_on_a_stand_in_release(tmp_path, caplog):
    release = tmp_path / "release"
    mixtures = stand_in_release(release)
    config = paper_config(release, output_dir=tmp_path / "run")
    run = RunDir(config.run_dir)
    check_given_checkpoints(config, run)  # components, base and the 16 references: there, safetensors, compatible

    with caplog.at_level(logging.WARNING, logger="demix.fidelity"):
        regs = registered_references(config)
    assert [r.name for _, r in regs] == [f"mix_{i}" for i in range(16)]
    assert "mix_16" in caplog.text and "skip_missing" in caplog.text
    refs = reference_mixtures(config, None, mixture_map(config, run))
    assert [m.source for m in refs] == ["registered"] * 16
    for m, (_, r) in zip(refs, regs):
        # The paper's protocol: merged at the mixture its reference model was trained on.
        assert m.component_weights == pytest.approx(mixtures[r.name]) and m.data_mixture == m.component_weights
        assert m.model_path == str(release / f"reference_models/{r.name}")

    from demix.merging import ProxyBuilder

    builder = ProxyBuilder.from_run(config, run, device="cpu")
    proxy = builder.build(refs[0].component_weights)
    from demix.merging.checkpoint import Checkpoint

    comps = {d: Checkpoint.open(p) for d, p in config.train.components.paths.items()}
    name = "model.layers.1.mlp.down_proj.weight"
    want = sum(refs[0].component_weights[d] * comps[d].get(name).double() for d in DOMAINS)
    got = dict(proxy.named_parameters())[name].double()
    # bf16 output: one rounding of the fp32 sum (relative error at most 2^-9 per element).
    assert torch.allclose(got, want, rtol=2**-8, atol=1e-7)
    assert not any(torch.allclose(got, comps[d].get(name).double(), rtol=2**-8, atol=1e-7) for d in DOMAINS)


def test_a_missing_reference_folder_is_an_error_without_skip_missing(tmp_path):
    from demix.errors import DemixError

    release = tmp_path / "release"
    stand_in_release(release, n_mixtures=3, n_folders=2)
    config = paper_config(release, output_dir=tmp_path / "run")
    config.fidelity.reference_sets[0].skip_missing = False
    with pytest.raises(DemixError, match=r"fidelity.reference_sets\[0\] 'mix_2' path is '.*reference_models/mix_2', which does not exist"):
        check_given_checkpoints(config, RunDir(config.run_dir))
