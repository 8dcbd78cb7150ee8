"""The fused linear kernel: ``out = c_0 * base + sum_i c_i * component_i`` over flat buffers.

Every linear merge goes through :func:`linear_combine`: the proxy builder (one call per dtype
group of the resident model) and the disk writer (one call per tensor). It reads each input
once and writes the output once, accumulating in fp32, with one fixed order of operations per
element, so the two give bit-identical proxies whatever the kernel, chunking or threads.

On CPU, large merges run a kernel compiled once by ``torch.compile`` (C++ through inductor);
``DEMIX_MERGE_COMPILE=0`` turns it off, and a platform without a compiler falls back to the
eager loop, which is correct too, only slower.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

#: Elements per chunk of the eager CPU kernel: the fp32 accumulator and the converted input
#: (64 KiB each) stay in cache, and the chunk is below torch's parallel grain (32768), so each
#: op runs inline on its Python thread.
CPU_CHUNK = 1 << 14
#: On GPUs there is no cache to fit; big chunks keep kernel launches few.
GPU_CHUNK = 1 << 24
#: CPU merges of at least this many elements use the compiled fused kernel (when it compiles):
#: one pass that reads each input once and writes the output once, at memory bandwidth. The
#: eager kernel spends most of its time in per-op overhead (measured at 12% of the plain-copy
#: bandwidth, against 100% or more for the fused one, see benchmarks/merge_speed.py).
FUSED_MIN_ELEMENTS = 1 << 20

_fused_kernel = None
_fused_failed = False


def _fused_body(out: torch.Tensor, inputs: list[torch.Tensor], coef: torch.Tensor) -> None:
    # The sum over inputs is a Python loop, unrolled when traced: one fused elementwise kernel
    # (a stacked .sum(0) compiles to a 3x slower reduction). Multiply and add stay separate ops,
    # exactly as in the eager kernel, so both give bit-identical results.
    acc = inputs[0].float() * coef[0]
    for i in range(1, len(inputs)):
        acc = acc + inputs[i].float() * coef[i]
    out.copy_(acc)


def _fused():
    """The compiled kernel (torch.compile, C++ via inductor), or None if it cannot be built."""
    global _fused_kernel, _fused_failed
    if _fused_kernel is None and not _fused_failed:
        if os.environ.get("DEMIX_MERGE_COMPILE", "1") == "0":
            _fused_failed = True
        else:
            _fused_kernel = torch.compile(_fused_body, dynamic=True)
    return _fused_kernel


def _combine_range(out, inputs, coefs, start, stop, chunk) -> None:
    acc_full = torch.empty(min(chunk, stop - start), dtype=torch.float32, device=out.device)
    tmp_full = torch.empty_like(acc_full)
    for lo in range(start, stop, chunk):
        hi = min(lo + chunk, stop)
        acc = acc_full[: hi - lo]
        tmp = tmp_full[: hi - lo]
        acc.copy_(inputs[0][lo:hi])
        acc.mul_(coefs[0])
        for x, a in zip(inputs[1:], coefs[1:]):
            # Convert into an fp32 buffer first: a mixed-dtype op takes torch's slow path.
            tmp.copy_(x[lo:hi])
            tmp.mul_(a)
            acc.add_(tmp)
        out[lo:hi].copy_(acc)


@torch.no_grad()
def linear_combine(
    out: torch.Tensor,
    base: torch.Tensor | None,
    components: Sequence[torch.Tensor],
    coef_base: float,
    coefs: Sequence[float],
    chunk: int | None = None,
    threads: int | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    """``out = coef_base * base + sum_i coefs[i] * components[i]``, elementwise over 1-D tensors.

    Inputs stay in their stored dtype; products and sums are fp32 (coefficients rounded to
    fp32 once) and the result is cast once into ``out``. The order of operations per element is
    fixed (base first, then components in order; multiply, then add), so the same inputs give
    bit-identical outputs whatever ``out`` is a slice of and whichever kernel runs: proxies
    built in memory equal merged checkpoints on disk.

    Kernels: on CPU, ``fused`` (default: for at least FUSED_MIN_ELEMENTS) uses the compiled
    kernel; otherwise an eager loop over cache-sized chunks split over ``threads`` Python threads
    (torch releases the GIL inside ops). The eager loop skips zero coefficients (adding
    ``0 * x`` to a finite sum changes nothing). On GPUs the eager loop uses big chunks.
    """
    n = out.numel()
    if n == 0:
        return out
    on_cpu = out.device.type == "cpu"
    # fp32 coefficients, so every kernel multiplies by the same numbers.
    c32 = torch.tensor([coef_base, *coefs], dtype=torch.float32).tolist()
    use_base = base is not None and coef_base != 0.0
    inputs = ([base] if use_base else []) + list(components)
    coef_list = ([c32[0]] if use_base else []) + c32[1:]
    if fused is None:
        fused = on_cpu and n >= FUSED_MIN_ELEMENTS
    if fused and on_cpu:
        global _fused_failed
        kernel = _fused()
        if kernel is not None:
            try:
                kernel(out, inputs, torch.tensor(coef_list, dtype=torch.float32))
                return out
            except Exception as exc:  # no C++ compiler, unsupported platform: eager is correct too
                _fused_failed = True
                logging.getLogger("demix.merging").warning("compiled merge kernel unavailable (%s); using eager", exc)
    active = [(x, a) for x, a in zip(inputs, coef_list) if a != 0.0]
    if not active:
        out.zero_()
        return out
    inputs, coef_list = [x for x, _ in active], [a for _, a in active]
    if chunk is None:
        chunk = CPU_CHUNK if on_cpu else GPU_CHUNK
    if threads is None:
        threads = torch.get_num_threads() if on_cpu else 1
    threads = max(1, min(threads, n // (4 * chunk)))
    if threads == 1:
        _combine_range(out, inputs, coef_list, 0, n, chunk)
        return out
    from concurrent.futures import ThreadPoolExecutor

    per = -(-n // threads)
    per = -(-per // chunk) * chunk  # chunk-aligned ranges
    bounds = [(lo, min(lo + per, n)) for lo in range(0, n, per)]
    with ThreadPoolExecutor(len(bounds)) as pool:
        futures = [pool.submit(_combine_range, out, inputs, coef_list, lo, hi, chunk) for lo, hi in bounds]
        for f in futures:
            f.result()
    return out
