"""Merge methods: one small class each, behind one registry, with mergekit's parameter names.

Every method turns a base tensor and the K component tensors of the same name into the merged
tensor, in fp32, given one non-negative weight per component (the mixture). Definitions follow
mergekit 0.1.5 so that the two tools agree (see docs/merging.md for where that differs from
the papers):

- ``linear``: ``sum_i w_i theta_i / sum_i w_i`` (``normalize``, default true). With a mixture
  (weights sum to 1) this is DeMix's ``base + sum_i w_i (theta_i - base)``.
- ``task_arithmetic``: ``base + lambda * sum_i w_i delta_i``.
- ``ties``, ``dare_ties``, ``dare_linear``, ``della``, ``della_linear``, ``breadcrumbs``,
  ``breadcrumbs_ties``: generalized task arithmetic: sparsify each delta (by magnitude, at
  random, DELLA's magnitude-ranked random drop, or breadcrumbs' outlier-and-small cut), weight
  it, optionally elect a sign per element from the *weighted* deltas, sum, divide by the weights
  (``normalize``), scale by ``lambda``.
- ``slerp``: spherical interpolation of two components, ``t`` = the second one's weight.
- ``multislerp``: mergekit's barycentric interpolation on the hypersphere.

Linear and task arithmetic are linear in their inputs: :meth:`MergeMethod.coefficients` gives
their coefficients and the proxy builder runs them through :func:`linear_combine`, one fused
pass over flat buffers (the fast path). The others go tensor by tensor through
:meth:`MergeMethod.merge_tensor`.

Randomness (DARE, DELLA) uses a ``torch.Generator`` seeded from (``seed``, tensor name,
component index), so a tensor's mask depends neither on the order tensors are merged in nor
on the mixture: every proxy of a search sees the same drop pattern.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from demix.errors import DemixError

# --------------------------------------------------------------------------- the fast kernel

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


# --------------------------------------------------------------------------- registry


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MergeMethod:
    """One merge method. Subclasses set ``name``, ``Params`` and implement the merge."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[_Params]] = _Params
    #: False for methods that ignore per-model weights (not offered for mixture search).
    uses_weights: ClassVar[bool] = True
    #: Number of components the method needs (None: any).
    num_components: ClassVar[int | None] = None
    #: Whether the result depends on the base checkpoint.
    uses_base: ClassVar[bool] = True

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        try:
            self.params = self.Params.model_validate(dict(params or {}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors())
            allowed = ", ".join(f.alias or k for k, f in self.Params.model_fields.items()) or "none"
            raise DemixError(
                f"bad parameters for merge method '{self.name}': {problems}", f"parameters of '{self.name}': {allowed}"
            ) from None
        self._check()

    def _check(self) -> None:
        """Cross-parameter checks (raise DemixError)."""

    def check_weights(self, weights: torch.Tensor) -> None:
        if self.num_components is not None and weights.numel() != self.num_components:
            raise DemixError(
                f"merge method '{self.name}' needs exactly {self.num_components} components, got {weights.numel()}",
                "use multislerp (any number of components) or linear",
            )

    def coefficients(self, weights: torch.Tensor) -> tuple[float, list[float]] | None:
        """(coefficient of the base, coefficients of the components) when the method is a
        fixed linear combination of its inputs (the fast path); None otherwise."""
        return None

    def merge_tensor(self, name: str, base: torch.Tensor, components: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Merged tensor (fp32) from ``base`` (fp32), ``components`` (fp32, [K, *shape]) and
        ``weights`` (fp32, [K])."""
        coefs = self.coefficients(weights)
        if coefs is None:
            raise NotImplementedError
        out = torch.empty(base.numel(), dtype=torch.float32, device=base.device)
        linear_combine(out, base.reshape(-1), [c.reshape(-1) for c in components], coefs[0], coefs[1])
        return out.view(base.shape)

    def param_dict(self) -> dict[str, Any]:
        return self.params.model_dump(by_alias=True)


METHODS: dict[str, type[MergeMethod]] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator: make a method available by its ``name``."""
    if cls.name in METHODS:
        raise ValueError(f"merge method {cls.name!r} is registered twice")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, params: dict[str, Any] | None = None) -> MergeMethod:
    """The registered method ``name`` with ``params`` validated (DemixError otherwise)."""
    if name not in METHODS:
        raise DemixError(f"unknown merge method '{name}'", f"use one of {', '.join(METHODS)}")
    return METHODS[name](params)


def mixture_methods() -> list[str]:
    """Methods offered for mixture search (those whose result depends on the weights)."""
    return [n for n, cls in METHODS.items() if cls.uses_weights]


# --------------------------------------------------------------------------- linear family


class _LinearParams(_Params):
    normalize: bool = True
    """Divide by the sum of the weights (mergekit default: true)."""


@register
class Linear(MergeMethod):
    name = "linear"
    summary = "weighted average sum_i w_i theta_i / sum_i w_i (DeMix; the fast path)"
    Params = _LinearParams
    uses_base = False

    def coefficients(self, weights: torch.Tensor) -> tuple[float, list[float]]:
        w = weights.double()
        if self.params.normalize:
            total = float(w.sum())
            w = w / (total if abs(total) > 0 else 1.0)
        return 0.0, w.tolist()


class _TaskArithmeticParams(_Params):
    lambda_: float = Field(default=1.0, alias="lambda")
    """Scale of the summed task vectors."""
    normalize: bool = False
    """Divide the summed weighted deltas by the sum of the weights."""


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "base + lambda * sum_i w_i (theta_i - base)"
    Params = _TaskArithmeticParams

    def coefficients(self, weights: torch.Tensor) -> tuple[float, list[float]]:
        w = weights.double()
        if self.params.normalize:
            total = float(w.sum())
            w = w / (total if abs(total) >= 1e-8 else 1.0)
        w = w * self.params.lambda_
        return 1.0 - float(w.sum()), w.tolist()


# --------------------------------------------------------------------------- generalized task arithmetic


def tensor_seed(seed: int, name: str, index: int) -> int:
    """A 63-bit seed from (seed, tensor name, component index), independent of merge order."""
    digest = hashlib.sha256(f"{seed}\0{name}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def rescale_l1(delta: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``kept`` scaled so its L1 norm equals ``delta``'s (mergekit's ``rescale: true``)."""
    before = delta.abs().sum()
    after = kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)


def sparsify_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of largest |delta| (at least one element) (TIES)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    flat = delta.reshape(-1)
    mask = torch.zeros_like(flat)
    # argsort, not topk: equal magnitudes at the threshold are then broken the way mergekit does.
    mask[torch.argsort(flat.abs(), descending=True)[:k]] = 1
    return (flat * mask).view(delta.shape)


def sparsify_outliers(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs: drop the ``gamma`` fraction of largest |delta| and the smallest, keeping
    ``density`` of the elements (fewer outliers are dropped when both do not fit)."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - keep - n_top)
    flat = delta.reshape(-1)
    order = torch.sort(flat.abs(), descending=False).indices
    mask = torch.zeros_like(flat)
    mask[order[n_bot : n_bot + keep]] = 1
    return (flat * mask).view(delta.shape)


def bernoulli_mask(shape: torch.Size, prob: torch.Tensor | float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    probs = prob if isinstance(prob, torch.Tensor) else torch.full(shape, float(prob), device=device)
    return torch.bernoulli(probs, generator=gen)


def sparsify_random(delta: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    """DARE: keep each element with probability ``density``."""
    if density >= 1:
        return delta
    return delta * bernoulli_mask(delta.shape, density, gen, delta.device)


def sparsify_della(delta: torch.Tensor, density: float, epsilon: float, gen: torch.Generator) -> torch.Tensor:
    """DELLA MagPrune: within each row, keep probabilities rise linearly with the rank of
    |delta| from ``density - epsilon`` (smallest) to ``density + epsilon`` (largest)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    cols = rows.shape[1]
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).to(torch.float32)
    # Ranks run 0..cols-1 in every row; a single column is at the middle probability.
    rank_norm = ranks / (cols - 1) if cols > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    mask = torch.bernoulli(probs, generator=gen)
    return (rows * mask).view(delta.shape)


class _GTAParams(_Params):
    lambda_: float = Field(default=1.0, alias="lambda")
    """Scale of the merged task vector."""
    density: float = Field(default=1.0, ge=0, le=1)
    """Fraction of each delta's elements kept."""
    normalize: bool = False
    """Divide by the sum of the weights (of the models agreeing with the elected sign, with a consensus)."""
    rescale: bool = False
    """After dropping, scale each delta back to its L1 norm (mergekit; DARE's paper divides by density)."""
    int8_mask: bool = False
    """Accepted for mergekit configs; a memory option there, no effect on results."""


class _ConsensusParams(_GTAParams):
    consensus_method: Literal["sum", "count"] = "sum"
    """Sign election per element: sign of the sum of weighted deltas (TIES) or of the count of signs."""


class _RandomParams(_GTAParams):
    seed: int = 0
    """Seed of the random drop (per tensor name and component; the same for every mixture)."""


class GeneralizedTaskArithmetic(MergeMethod):
    """sparsify -> weight -> (sign consensus) -> sum -> (normalize) -> lambda -> + base."""

    consensus: ClassVar[bool] = False
    sparsification: ClassVar[Literal["magnitude", "random", "outliers", "della"] | None] = None

    def sparsify(self, name: str, index: int, delta: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.sparsification is None or p.density >= 1:
            return delta
        if self.sparsification == "magnitude":
            kept = sparsify_magnitude(delta, p.density)
        elif self.sparsification == "outliers":
            kept = sparsify_outliers(delta, p.density, p.gamma)
        else:
            gen = _generator(delta.device, tensor_seed(p.seed, name, index))
            if self.sparsification == "random":
                kept = sparsify_random(delta, p.density, gen)
            else:
                kept = sparsify_della(delta, p.density, p.epsilon, gen)
        return rescale_l1(delta, kept) if p.rescale else kept

    def merge_tensor(self, name: str, base: torch.Tensor, components: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        p = self.params
        deltas = torch.stack([self.sparsify(name, i, components[i] - base) for i in range(components.shape[0])])
        w = weights.to(deltas.dtype).view(-1, *([1] * base.dim()))
        weighted = deltas * w
        if self.consensus:
            if p.consensus_method == "sum":
                elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
            else:
                elected = torch.where(weighted.sign().sum(0) >= 0, 1.0, -1.0)
            agree = (weighted.sign() == elected).to(weighted.dtype)
            mixed = (weighted * agree).sum(0)
            divisor = (w * agree).sum(0)
            divisor = torch.where(divisor == 0, 1.0, divisor)
        else:
            mixed = weighted.sum(0)
            divisor = w.sum(0)
            divisor = torch.where(divisor.abs() < 1e-8, 1.0, divisor)
        if p.normalize:
            mixed = mixed / divisor
        if p.lambda_ != 1:
            mixed = mixed * p.lambda_
        return base + mixed


class _TiesParams(_ConsensusParams):
    normalize: bool = True


@register
class Ties(GeneralizedTaskArithmetic):
    name = "ties"
    summary = "TIES: keep the top-density |delta|, elect signs from weighted deltas, average the agreeing ones"
    Params = _TiesParams
    consensus = True
    sparsification = "magnitude"


class _DareLinearParams(_RandomParams):
    rescale: bool = True


@register
class DareLinear(GeneralizedTaskArithmetic):
    name = "dare_linear"
    summary = "DARE: drop delta elements at random (keep density), rescale, weighted sum"
    Params = _DareLinearParams
    sparsification = "random"


class _DareTiesParams(_RandomParams, _ConsensusParams):
    rescale: bool = True


@register
class DareTies(GeneralizedTaskArithmetic):
    name = "dare_ties"
    summary = "DARE drop + TIES sign consensus"
    Params = _DareTiesParams
    consensus = True
    sparsification = "random"


class _DellaLinearParams(_RandomParams):
    rescale: bool = True
    epsilon: float = Field(default=0.15, ge=0, lt=1)
    """Half-width of the keep-probability range around density (by magnitude rank)."""


class _DellaParams(_DellaLinearParams, _ConsensusParams):
    normalize: bool = True


class _DellaCheck:
    def _check(self) -> None:
        p = self.params
        if p.density < 1 and not (0 < p.density - p.epsilon and p.density + p.epsilon < 1):
            raise DemixError(
                f"merge method '{self.name}': density +/- epsilon must lie in (0, 1), got density={p.density}, epsilon={p.epsilon}",
                "lower epsilon or move density away from 0 and 1",
            )


@register
class Della(_DellaCheck, GeneralizedTaskArithmetic):
    name = "della"
    summary = "DELLA: magnitude-ranked random drop (density +/- epsilon), rescale, sign consensus"
    Params = _DellaParams
    consensus = True
    sparsification = "della"


@register
class DellaLinear(_DellaCheck, GeneralizedTaskArithmetic):
    name = "della_linear"
    summary = "DELLA drop without sign consensus"
    Params = _DellaLinearParams
    sparsification = "della"


class _BreadcrumbsParams(_GTAParams):
    gamma: float = Field(default=0.01, ge=0, le=1)
    """Fraction of the largest |delta| dropped as outliers."""


class _BreadcrumbsTiesParams(_BreadcrumbsParams, _ConsensusParams):
    pass


@register
class Breadcrumbs(GeneralizedTaskArithmetic):
    name = "breadcrumbs"
    summary = "Model Breadcrumbs: drop the gamma largest and the smallest |delta|, keep density"
    Params = _BreadcrumbsParams
    sparsification = "outliers"


@register
class BreadcrumbsTies(GeneralizedTaskArithmetic):
    name = "breadcrumbs_ties"
    summary = "Breadcrumbs + TIES sign consensus"
    Params = _BreadcrumbsTiesParams
    consensus = True
    sparsification = "outliers"


# --------------------------------------------------------------------------- spherical


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of whole tensors: the angle comes from the normalised tensors,
    the coefficients apply to the raw ones; nearly (anti)parallel inputs fall back to lerp."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = torch.where(na > eps, na, 1.0)
    nb = torch.where(nb > eps, nb, 1.0)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if float(dot.abs()) > dot_threshold:
        return ((1 - t) * v0 + t * v1)
    theta = torch.acos(dot)
    s = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / s) * v0 + (torch.sin(t * theta) / s) * v1


class _SlerpParams(_Params):
    dot_threshold: float = Field(default=0.9995, gt=0, le=1)
    """Above this |cos angle| the tensors are treated as parallel and interpolated linearly."""


@register
class Slerp(MergeMethod):
    name = "slerp"
    summary = "spherical interpolation of two components; t = the second component's weight"
    Params = _SlerpParams
    num_components = 2
    uses_base = False

    def merge_tensor(self, name: str, base: torch.Tensor, components: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        total = float(weights.sum())
        t = float(weights[1]) / total if total > 0 else 0.5
        return slerp(t, components[0], components[1], self.params.dot_threshold)


class _MultiSlerpParams(_Params):
    normalize_weights: bool = True
    """Divide the weights by their sum."""
    eps: float = Field(default=1e-8, gt=0)
    """Numerical floor of norms."""
    use_base: bool = True
    """Interpolate the deltas (component - base) and add the base back (mergekit: a base_model is given)."""


@register
class MultiSlerp(MergeMethod):
    name = "multislerp"
    summary = "barycentric interpolation on the hypersphere of any number of components (mergekit)"
    Params = _MultiSlerpParams

    def merge_tensor(self, name: str, base: torch.Tensor, components: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        p = self.params
        k = components.shape[0]
        if k == 1:
            return components[0].clone()
        vecs = components - base if p.use_base else components.clone()
        flat = vecs.reshape(k, -1)
        w = weights.to(flat.dtype)
        if p.normalize_weights:
            w = w / w.sum()
        norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
        unit = flat / (norms + p.eps)
        mean = (unit * w.view(-1, 1)).sum(0)
        mean_norm = torch.linalg.vector_norm(mean)
        if mean_norm < p.eps:
            if k == 2:
                res = (flat[0] * w[0] + flat[1] * w[1]).view(base.shape)
                return res + base if p.use_base else res
            raise DemixError(
                f"multislerp: the weighted mean direction of tensor '{name}' is zero (antipodal components)",
                "use other weights or the linear method",
            )
        mean = mean / mean_norm
        dots = (unit * mean).sum(-1, keepdim=True)
        tangent = ((unit - dots * mean) * w.view(-1, 1)).sum(0)
        tnorm = torch.linalg.vector_norm(tangent) + p.eps
        res = mean * torch.cos(tnorm) + tangent * (torch.sin(tnorm) / tnorm)
        res = (res * (norms.squeeze(-1) * w).sum()).view(base.shape)
        return res + base if p.use_base else res
