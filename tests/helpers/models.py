"""Tiny random Llama models: the one factory behind the tests' and benchmarks' checkpoints.

The same arguments give the same weights: the torch seed is set right before the model is
built, so a checkpoint built here matches one built by an earlier copy of this code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

# (current value, value at the start, generator) -> the copy's value; see save_perturbed_copies.
Perturb = Callable[["torch.Tensor", "torch.Tensor", "torch.Generator"], "torch.Tensor"]


def tiny_llama(
    vocab_size: int,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 512,
    tie: bool = True,
    seed: int = 0,
    embedding_scale: float = 20.0,
) -> LlamaForCausalLM:
    """A random LlamaForCausalLM in eval mode, built right after ``torch.manual_seed(seed)``.

    ``kv_heads`` defaults to ``heads`` and ``intermediate`` to twice ``hidden``. Random init
    gives near-uniform logits (a loss of about ln V on every token, whatever the weights), so
    the embeddings are scaled by ``embedding_scale`` to make models, and merges of them,
    score differently; pass 1.0 for the plain initialisation.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).eval()
    if embedding_scale != 1.0:
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(embedding_scale)
    return model


def save_tiny_checkpoint(path: Path, vocab_size: int, **model_args: Any) -> LlamaForCausalLM:
    """Build ``tiny_llama(vocab_size, **model_args)``, save it as an HF checkpoint at ``path``, return it."""
    model = tiny_llama(vocab_size, **model_args)
    model.save_pretrained(path)
    return model


def save_perturbed_copies(
    model: LlamaForCausalLM, dirs: Mapping[str, Path], perturb: Perturb, max_shard_size: str | None = None
) -> None:
    """Save one copy of ``model`` per entry of ``dirs`` (components = base + small deltas).

    For the i-th copy every parameter is set to ``perturb(current, start, generator)``, where
    ``generator`` is seeded with 100 + i and ``current`` is what the parameter holds at that
    moment (the previous copy's value from the second copy on). ``model`` holds its starting
    weights again on return. ``max_shard_size`` (e.g. "40KB") writes sharded checkpoints.
    """
    import torch

    save_args = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for i, path in enumerate(dirs.values()):
            gen = torch.Generator().manual_seed(100 + i)
            for name, p in model.named_parameters():
                p.copy_(perturb(p, start[name], gen))
            model.save_pretrained(path, **save_args)
        for name, p in model.named_parameters():
            p.copy_(start[name])
