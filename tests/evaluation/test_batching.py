"""Batch size from free device memory (demix.evaluation.batching): the pure arithmetic here, the
CUDA read of free memory in a test marked gpu."""

from __future__ import annotations

import pytest

from demix.evaluation.batching import MAX_ROWS, batch_rows, bytes_per_sequence

SMOL = {"hidden": 576, "intermediate": 1536, "heads": 9, "vocab": 49152, "dtype_bytes": 2}


def test_bytes_per_sequence_counts_logits_attention_and_activations():
    per = bytes_per_sequence(256, **SMOL)
    logits = 256 * 49152 * (2 + 8)
    attention = 9 * 256 * 256 * 4 + 256 * 256 * 2
    activations = 256 * (6 * 576 + 3 * 1536) * 2
    assert per == logits + attention + activations
    # Keeping only the scored positions' logits (the multiple-choice path) is much cheaper.
    assert bytes_per_sequence(256, kept=32, **SMOL) < per / 4


def test_batch_rows_fit_the_free_memory():
    gib = 1 << 30
    per = bytes_per_sequence(2048, **SMOL)
    rows = batch_rows(40 * gib, 2048, **SMOL)
    assert rows == int(0.8 * 40 * gib // per)
    assert rows * per <= 0.8 * 40 * gib < (rows + 1) * per
    assert batch_rows(80 * gib, 2048, **SMOL) >= 2 * rows - 1  # twice the memory, about twice the batch
    assert batch_rows(1, 2048, **SMOL) == 1  # never zero: one sequence is tried and may fail loudly
    assert batch_rows(1 << 50, 16, **SMOL) == MAX_ROWS
    # bf16 -> fp32 weights: more bytes per sequence, a smaller batch.
    assert batch_rows(40 * gib, 2048, **{**SMOL, "dtype_bytes": 4}) < rows


@pytest.mark.gpu
def test_cuda_batch_rows_reads_free_memory():
    import torch

    from demix.evaluation.batching import cuda_batch_rows
    from helpers.models import tiny_llama

    model = tiny_llama(300).to("cuda", torch.bfloat16)
    shape = {"hidden": 32, "intermediate": 64, "heads": 2, "vocab": 300, "dtype_bytes": 2}
    before, _ = torch.cuda.mem_get_info()
    rows = cuda_batch_rows(model, 256)
    after, _ = torch.cuda.mem_get_info()
    lo, hi = sorted((batch_rows(before, 256, **shape), batch_rows(after, 256, **shape)))
    assert lo <= rows <= hi
    assert cuda_batch_rows(model.to("cpu"), 256, fallback=7) == 7
