"""The fused linear kernel: the same bits whatever the chunking, threads or kernel (compiled or
eager), and fp32 accumulation of stored-dtype inputs."""

from __future__ import annotations

import pytest
import torch

from demix.merging.kernel import linear_combine


def test_linear_combine_is_chunk_and_thread_independent():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(100_003, generator=g).to(torch.bfloat16)
    comps = [torch.randn(100_003, generator=g).to(torch.bfloat16) for _ in range(4)]
    coefs = [0.1, 0.0, 0.6, 0.3]
    a = linear_combine(torch.empty(100_003), base, comps, 0.25, coefs, chunk=1 << 14, threads=1, fused=False)
    b = linear_combine(torch.empty(100_003), base, comps, 0.25, coefs, chunk=999, threads=2, fused=False)
    assert torch.equal(a, b)
    want = 0.25 * base.double() + sum(c * x.double() for c, x in zip(coefs, comps))
    assert (a.double() - want).abs().max().item() < 1e-6  # fp32 accumulation of bf16 inputs


@pytest.mark.slow
def test_compiled_kernel_equals_eager_bit_for_bit():
    # Large merges use the compiled kernel, small tensors of the disk writer the eager one:
    # both must give the same bits, or proxies would differ from checkpoints on disk.
    n = (1 << 20) + 3
    g = torch.Generator().manual_seed(6)
    base = torch.randn(n, generator=g).to(torch.bfloat16)
    comps = [(base.float() + 0.01 * torch.randn(n, generator=g)).to(torch.bfloat16) for _ in range(3)]
    for coef_base, coefs, dtype in [(0.0, [0.5, 0.0, 0.5], torch.bfloat16), (-0.2, [0.7, 0.3, 0.2], torch.float32)]:
        fused = linear_combine(torch.empty(n, dtype=dtype), base, comps, coef_base, coefs, fused=True)
        eager = linear_combine(torch.empty(n, dtype=dtype), base, comps, coef_base, coefs, fused=False)
        assert torch.equal(fused, eager)
        part = torch.empty(n, dtype=dtype)
        linear_combine(part[:1000], base[:1000], [c[:1000] for c in comps], coef_base, coefs, fused=False)
        linear_combine(part[1000:], base[1000:], [c[1000:] for c in comps], coef_base, coefs, fused=True)
        assert torch.equal(fused, part)
