"""Tiny real HF checkpoints for the merging tests: a base and components = base + small deltas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def make_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(250)}
    vocab["[UNK]"] = 250
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)


def make_model(seed: int = 0, tie: bool = True, hidden: int = 32, vocab: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg)


def make_family(
    root: Path,
    domains=("general", "math", "code"),
    dtype: torch.dtype = torch.float32,
    tie: bool = True,
    scale: float = 0.02,
    shard_size: str | None = None,
) -> tuple[Path, dict[str, Path]]:
    """Save a base and one component per domain (base + scale * noise) under ``root``."""
    base = make_model(0, tie=tie).to(dtype)
    base_dir = root / "base"
    base.save_pretrained(base_dir, max_shard_size=shard_size or "5GB")
    make_tokenizer(base_dir)
    ref = {k: v.clone() for k, v in base.state_dict().items()}
    comps = {}
    for i, d in enumerate(domains):
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for name, p in base.named_parameters():
                noise = torch.randn(p.shape, generator=gen) * scale
                p.copy_((ref[name].float() + noise).to(dtype))
        comps[d] = root / d
        base.save_pretrained(comps[d], max_shard_size=shard_size or "5GB")
    with torch.no_grad():
        for name, p in base.named_parameters():
            p.copy_(ref[name])
    return base_dir, comps


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """fp32 base + 3 components (general, math, code), tied embeddings."""
    return make_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="session")
def family_bf16(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """bf16 base + 3 components, sharded (several safetensors files + index)."""
    return make_family(tmp_path_factory.mktemp("family_bf16"), dtype=torch.bfloat16, shard_size="40KB")
