"""Tiny real HF checkpoints for the merging tests: a base and components = base + small deltas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.models import save_perturbed_copies, tiny_llama


def make_tokenizer(path: Path) -> None:
    """A word-level tokenizer over ``t0`` .. ``t249`` and ``[UNK]``, saved at ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(250)}
    vocab["[UNK]"] = 250
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)


def make_model(seed: int = 0, tie: bool = True, hidden: int = 32, vocab: int = 256):
    """The merging tests' tiny Llama: 4 attention heads over 2 KV heads (grouped-query), 64 positions."""
    return tiny_llama(vocab, hidden=hidden, heads=4, kv_heads=2, max_positions=64, tie=tie, seed=seed, embedding_scale=1.0)


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
    comps = {d: root / d for d in domains}

    def perturb(current: torch.Tensor, start: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return (start.float() + torch.randn(start.shape, generator=gen) * scale).to(dtype)

    save_perturbed_copies(base, comps, perturb, max_shard_size=shard_size or "5GB")
    return base_dir, comps


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """fp32 base + 3 components (general, math, code), tied embeddings."""
    return make_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="session")
def family_bf16(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """bf16 base + 3 components, sharded (several safetensors files + index)."""
    return make_family(tmp_path_factory.mktemp("family_bf16"), dtype=torch.bfloat16, shard_size="40KB")
