"""Batch size from free device memory: the largest batch whose forward pass fits.

On CUDA the number of sequences per forward pass (held-out windows, packed multiple-choice
items) is chosen from ``torch.cuda.mem_get_info`` and the model's shape instead of a fixed
``evaluation.batch_size``; on CPU the configured value is used (memory there is not the limit,
and big batches only add cache misses).

The estimate is of an inference forward (no activations are kept across layers) and is
deliberately pessimistic: per sequence of ``T`` tokens,

- the residual stream and one layer's working set: ``T x (6 hidden + 3 intermediate)`` values in
  the model's dtype (hidden states, q/k/v/o, the MLP's gate, up and activation);
- attention: ``heads x T x T`` fp32 scores (as if the kernel materialised them) plus the
  ``T x T`` additive mask of the packed path in the model's dtype;
- logits of the kept positions ``K``: ``K x vocab`` in the model's dtype, plus two fp32 copies
  of the scored rows (the upcast and its log-softmax).

The pure function :func:`batch_rows` does the arithmetic (tested here); :func:`cuda_batch_rows`
reads the free memory and the model's config.
"""

from __future__ import annotations

from typing import Any

#: Fraction of the free memory a batch may use (the allocator fragments; other work may start).
MEMORY_FRACTION = 0.8
#: Largest batch ever chosen (beyond it the GPU is saturated and latency only grows).
MAX_ROWS = 1024


def bytes_per_sequence(
    seq_len: int, *, hidden: int, intermediate: int, heads: int, vocab: int, dtype_bytes: int, kept: int | None = None
) -> int:
    """Peak bytes one sequence of ``seq_len`` tokens adds to a forward pass (see module docstring);
    ``kept``: positions whose logits are kept (default all)."""
    kept = seq_len if kept is None else kept
    activations = seq_len * (6 * hidden + 3 * intermediate) * dtype_bytes
    attention = heads * seq_len * seq_len * 4 + seq_len * seq_len * dtype_bytes
    logits = kept * vocab * (dtype_bytes + 8)
    return activations + attention + logits


def batch_rows(
    free_bytes: int,
    seq_len: int,
    *,
    hidden: int,
    intermediate: int,
    heads: int,
    vocab: int,
    dtype_bytes: int,
    kept: int | None = None,
    fraction: float = MEMORY_FRACTION,
    max_rows: int = MAX_ROWS,
) -> int:
    """Sequences per forward pass that fit in ``fraction`` of ``free_bytes`` (at least 1, at most
    ``max_rows``)."""
    per = bytes_per_sequence(
        seq_len, hidden=hidden, intermediate=intermediate, heads=heads, vocab=vocab, dtype_bytes=dtype_bytes, kept=kept
    )
    return int(max(1, min(max_rows, (fraction * free_bytes) // per)))


def model_shape(model: Any) -> dict[str, int]:
    """hidden, intermediate, heads, vocab and dtype bytes of a transformers causal LM."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    hidden = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0) or 0)
    param = next(model.parameters())
    return {
        "hidden": hidden,
        "intermediate": int(getattr(cfg, "intermediate_size", None) or 4 * hidden),
        "heads": int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1) or 1),
        "vocab": int(model.get_input_embeddings().num_embeddings),
        "dtype_bytes": int(param.element_size()),
    }


def cuda_batch_rows(model: Any, seq_len: int, kept: int | None = None, fallback: int = 16) -> int:
    """:func:`batch_rows` for ``model`` on its CUDA device from ``torch.cuda.mem_get_info``;
    ``fallback`` for a model that is not on CUDA."""
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return fallback
    free, _ = torch.cuda.mem_get_info(device)
    return batch_rows(int(free), seq_len, kept=kept, **model_shape(model))
