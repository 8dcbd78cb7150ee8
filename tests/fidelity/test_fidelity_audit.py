"""Merge-validity audit on tiny random Llama checkpoints written with safetensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from demix.errors import DemixError
from demix.fidelity._tensors import tensor_group
from demix.fidelity.audit import audit_components, proxy_gap
from demix.fidelity.audit_report import AuditReport, AuditThresholds
from helpers.models import save_tiny_checkpoint


def _base(path: Path, tied: bool = True) -> dict[str, torch.Tensor]:
    save_tiny_checkpoint(path, 256, heads=4, max_positions=2048, tie=tied, embedding_scale=1.0)
    return load_file(str(path / "model.safetensors"))


def _variant(base_dir: Path, out: Path, delta: dict[str, torch.Tensor], dtype=None) -> Path:
    """A checkpoint ``base + delta`` (same config), written as safetensors."""
    out.mkdir(parents=True)
    (out / "config.json").write_text((base_dir / "config.json").read_text())
    base = load_file(str(base_dir / "model.safetensors"))
    tensors = {k: (v + delta[k]) for k, v in base.items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _noise(base: dict[str, torch.Tensor], scale: float, seed: int) -> dict[str, torch.Tensor]:
    """A random delta whose norm is ``scale`` x the norm of each tensor."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in base.items():
        d = torch.randn(v.shape, generator=g)
        out[k] = d * (scale * v.norm() / d.norm())
    return out


@pytest.fixture
def ckpts(tmp_path):
    base_dir = tmp_path / "base"
    base = _base(base_dir)
    small_a = _noise(base, 0.02, seed=1)
    small_b = _noise(base, 0.03, seed=2)
    large = _noise(base, 1.5, seed=3)
    return {
        "base_dir": base_dir,
        "base": base,
        "math": _variant(base_dir, tmp_path / "math", small_a),
        "code": _variant(base_dir, tmp_path / "code", small_b),
        "math_copy": _variant(base_dir, tmp_path / "math_copy", small_a),
        "math_neg": _variant(base_dir, tmp_path / "math_neg", {k: -v for k, v in small_a.items()}),
        "large": _variant(base_dir, tmp_path / "large", large),
        "tmp": tmp_path,
    }


def test_audit_flags_the_large_delta_only(ckpts):
    rep = audit_components(ckpts["base_dir"], {"math": ckpts["math"], "code": ckpts["code"], "wild": ckpts["large"]})
    assert set(rep.deltas["math"]) == {"embeddings", "norms", "attention", "mlp", "all"}
    assert rep.deltas["math"]["all"].relative == pytest.approx(0.02, rel=1e-3)
    assert rep.deltas["code"]["attention"].relative == pytest.approx(0.03, rel=1e-3)
    assert rep.deltas["wild"]["mlp"].relative == pytest.approx(1.5, rel=1e-3)
    large = [f for f in rep.findings if f.kind == "large_delta"]
    assert large and {f.subject for f in large} == {"wild"}
    assert all(f.severity == "critical" and f.value > 1.0 for f in large)
    assert {f.group for f in large} == {"embeddings", "norms", "attention", "mlp", "all"}
    # Independent random deltas are nearly orthogonal (|cos| ~ 1/sqrt(elements)). The
    # whole-model cosine of this tiny model is dominated by the 160 norm weights (all ones at
    # init, so the largest tensors by norm), hence the per-group check.
    for g in ("attention", "mlp", "embeddings"):
        assert abs(rep.cosine[g]["math"]["code"]) < 0.05
    assert not [f for f in rep.findings if f.kind == "large_delta" and f.subject != "wild"]
    # A warning (not critical) between the two thresholds.
    rep = audit_components(ckpts["base_dir"], {"wild": ckpts["large"]},
                           thresholds=AuditThresholds(relative_delta=1.0, relative_delta_critical=2.0))
    assert {f.severity for f in rep.warnings()} == {"warning"}


def test_cosine_of_identical_and_opposite_deltas(ckpts):
    rep = audit_components(ckpts["base_dir"], {"a": ckpts["math"], "b": ckpts["math_copy"], "c": ckpts["math_neg"]})
    for g in ("all", "attention", "mlp", "embeddings", "norms"):
        assert rep.cosine[g]["a"]["b"] == pytest.approx(1.0, abs=1e-9)
        assert rep.cosine[g]["a"]["a"] == pytest.approx(1.0, abs=1e-9)
        assert rep.cosine[g]["a"]["c"] == pytest.approx(-1.0, abs=1e-6)
    kinds = {(f.kind, f.subject, f.severity) for f in rep.findings}
    assert ("near_duplicate_deltas", "a|b", "info") in kinds
    assert ("conflicting_deltas", "a|c", "warning") in kinds
    assert ("conflicting_deltas", "b|c", "warning") in kinds
    text = rep.to_json()
    assert json.loads(text)["cosine"]["all"]["a"]["b"] == pytest.approx(1.0)


def test_bf16_checkpoints_are_accumulated_in_high_precision(ckpts):
    tmp = ckpts["tmp"]
    base16 = _variant(ckpts["base_dir"], tmp / "base16", {k: torch.zeros_like(v) for k, v in ckpts["base"].items()},
                      dtype=torch.bfloat16)
    delta = _noise(ckpts["base"], 0.05, seed=4)
    comp16 = _variant(ckpts["base_dir"], tmp / "comp16", delta, dtype=torch.bfloat16)
    rep = audit_components(base16, {"c": comp16})
    # Exact answer from the stored bf16 values, computed in fp64 here.
    b = load_file(str(base16 / "model.safetensors"))
    c = load_file(str(comp16 / "model.safetensors"))
    num = sum(float(((c[k].double() - b[k].double()) ** 2).sum()) for k in b)
    den = sum(float((b[k].double() ** 2).sum()) for k in b)
    assert rep.deltas["c"]["all"].relative == pytest.approx(math.sqrt(num / den), rel=1e-9)
    assert rep.deltas["c"]["all"].relative == pytest.approx(0.05, rel=0.05)


def test_untied_head_is_its_own_group(tmp_path):
    base = _base(tmp_path / "base", tied=False)
    comp = _variant(tmp_path / "base", tmp_path / "c", _noise(base, 0.01, seed=1))
    rep = audit_components(tmp_path / "base", {"c": comp})
    assert rep.deltas["c"]["lm_head"].numel == 256 * 32
    assert rep.deltas["c"]["embeddings"].numel == 256 * 32


def test_zero_delta_is_flagged(ckpts):
    same = _variant(ckpts["base_dir"], ckpts["tmp"] / "same", {k: torch.zeros_like(v) for k, v in ckpts["base"].items()})
    rep = audit_components(ckpts["base_dir"], {"math": ckpts["math"], "untrained": same})
    assert [(f.kind, f.subject) for f in rep.warnings()] == [("zero_delta", "untrained")]
    assert math.isnan(rep.cosine["all"]["math"]["untrained"])
    assert "null" in rep.to_json() and "NaN" not in rep.to_json()


def test_proxy_gap(ckpts):
    base = ckpts["base"]
    reference = ckpts["math"]
    # A proxy equal to the reference has no gap; the base as a proxy is exactly 1 away.
    gap = proxy_gap(ckpts["base_dir"], reference, reference, mixture_id="m1")
    assert gap.relative_distance == 0.0 and not gap.findings
    gap = proxy_gap(ckpts["base_dir"], ckpts["base_dir"], reference, mixture_id="m1",
                    mixture={"math": 1.0}, proxy_scores={"math": 0.3, "code": 0.2},
                    reference_scores={"math": 0.5, "general": 0.1})
    assert gap.relative_distance == pytest.approx(1.0)
    assert [f.kind for f in gap.findings] == ["proxy_gap"]
    assert gap.score_gaps == {"math": {"proxy": 0.3, "reference": 0.5, "gap": pytest.approx(-0.2)}}
    # In-memory proxy (a resident model's state dict): halfway between base and reference.
    ref = load_file(str(reference / "model.safetensors"))
    half = {k: 0.5 * (base[k] + ref[k]) for k in base}
    gap = proxy_gap(ckpts["base_dir"], half, reference, mixture_id="m2")
    assert gap.relative_distance == pytest.approx(0.5, rel=1e-5)
    assert gap.groups["attention"] == pytest.approx(0.5, rel=1e-5)
    rep = audit_components(ckpts["base_dir"], {"math": reference})
    rep.add_gap(proxy_gap(ckpts["base_dir"], ckpts["base_dir"], reference, mixture_id="m1"))
    assert [f.kind for f in rep.warnings()] == ["proxy_gap"]


def test_bad_checkpoints_are_clear_errors(ckpts):
    tmp = ckpts["tmp"]
    base = ckpts["base"]
    # Missing tensor.
    missing = tmp / "missing"
    missing.mkdir()
    save_file({k: v for k, v in base.items() if "layers.1.mlp.up_proj" not in k}, str(missing / "model.safetensors"))
    with pytest.raises(DemixError, match=r"tensor 'model.layers.1.mlp.up_proj.weight' is missing from component 'bad'"):
        audit_components(ckpts["base_dir"], {"bad": missing})
    # Shape mismatch.
    shaped = tmp / "shaped"
    shaped.mkdir()
    save_file({k: (v[:-1] if "embed_tokens" in k else v) for k, v in base.items()}, str(shaped / "model.safetensors"))
    with pytest.raises(DemixError, match="shape"):
        audit_components(ckpts["base_dir"], {"bad": shaped})
    # NaN weights.
    nan = tmp / "nan"
    nan.mkdir()
    bad = {k: v.clone() for k, v in base.items()}
    bad["model.norm.weight"][0] = float("nan")
    save_file(bad, str(nan / "model.safetensors"))
    with pytest.raises(DemixError, match="'model.norm.weight' of component 'bad' holds NaN"):
        audit_components(ckpts["base_dir"], {"bad": nan})
    # Pickled weights only: refused, never unpickled.
    pickled = tmp / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not a real pickle")
    with pytest.raises(DemixError, match="reads safetensors only"):
        audit_components(ckpts["base_dir"], {"bad": pickled})
    with pytest.raises(DemixError, match="does not exist"):
        audit_components(tmp / "nowhere", {"x": ckpts["math"]})
    # Truncated file.
    trunc = tmp / "trunc"
    trunc.mkdir()
    data = (ckpts["math"] / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DemixError, match="trunc"):
        audit_components(ckpts["base_dir"], {"bad": trunc})
    with pytest.raises(DemixError, match="no components"):
        audit_components(ckpts["base_dir"], {})


def test_audit_report_reads_back_what_it_saved(ckpts):
    """audit.json round-trips through AuditReport.read (NaN cosines included); a garbled file
    is a DemixError naming it."""
    same = _variant(ckpts["base_dir"], ckpts["tmp"] / "same2", {k: torch.zeros_like(v) for k, v in ckpts["base"].items()})
    rep = audit_components(ckpts["base_dir"], {"math": ckpts["math"], "untrained": same})
    rep.add_gap(proxy_gap(ckpts["base_dir"], ckpts["base_dir"], ckpts["math"], mixture_id="m1", mixture={"math": 1.0}))
    path = ckpts["tmp"] / "audit.json"
    rep.save(path)
    back = AuditReport.read(path)
    assert back.to_dict() == rep.to_dict()
    assert math.isnan(back.cosine["all"]["math"]["untrained"])
    assert [(f.kind, f.subject) for f in back.warnings()] == [(f.kind, f.subject) for f in rep.warnings()]
    path.write_text('{"components": ["math"]}')
    with pytest.raises(DemixError) as exc:
        AuditReport.read(path)
    assert str(path) in exc.value.what and "demix fidelity" in exc.value.fix


@pytest.mark.parametrize("name, group", [
    ("model.embed_tokens.weight", "embeddings"),
    ("model.layers.3.self_attn.q_proj.weight", "attention"),
    ("model.layers.3.self_attn.q_norm.weight", "norms"),  # Qwen3
    ("model.layers.3.input_layernorm.weight", "norms"),
    ("model.layers.3.mlp.down_proj.weight", "mlp"),
    ("model.norm.weight", "norms"),
    ("lm_head.weight", "lm_head"),
    ("transformer.wte.weight", "embeddings"),  # GPT-2
    ("transformer.wpe.weight", "embeddings"),
    ("transformer.h.0.attn.c_attn.weight", "attention"),
    ("transformer.h.0.attn.c_proj.bias", "attention"),
    ("transformer.h.0.mlp.c_proj.weight", "mlp"),
    ("transformer.h.0.ln_1.weight", "norms"),
    ("transformer.ln_f.bias", "norms"),
    ("gpt_neox.embed_in.weight", "embeddings"),  # GPT-NeoX
    ("gpt_neox.layers.0.attention.query_key_value.weight", "attention"),
    ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "mlp"),
    ("embed_out.weight", "lm_head"),
    ("model.layers.0.block_sparse_moe.gate.weight", "other"),
])
def test_tensor_groups(name, group):
    assert tensor_group(name) == group
