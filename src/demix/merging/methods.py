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
their coefficients and the proxy builder runs them through
:func:`~demix.merging.kernel.linear_combine`, one fused pass over flat buffers (the fast path).
The others go tensor by tensor through :meth:`MergeMethod.merge_tensor`; how they sparsify
deltas (and why the random drops of DARE and DELLA are the same for every mixture) is
:mod:`demix.merging.sparsify`.

Why ~450 lines: eleven registered methods, each a small class with its typed parameters, read
best side by side with the registry; the shared pieces already live in kernel.py and sparsify.py.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from demix.errors import DemixError
from demix.merging.kernel import linear_combine
from demix.merging.sparsify import (
    generator,
    rescale_l1,
    sparsify_della,
    sparsify_magnitude,
    sparsify_outliers,
    sparsify_random,
    tensor_seed,
)

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
    #: The validated parameters, an instance of ``Params`` (subclasses narrow the type).
    params: _Params

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
    params: _LinearParams
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
    params: _TaskArithmeticParams

    def coefficients(self, weights: torch.Tensor) -> tuple[float, list[float]]:
        w = weights.double()
        if self.params.normalize:
            total = float(w.sum())
            w = w / (total if abs(total) >= 1e-8 else 1.0)
        w = w * self.params.lambda_
        return 1.0 - float(w.sum()), w.tolist()


# --------------------------------------------------------------------------- generalized task arithmetic


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
    #: Subclasses' ``Params`` add what their sparsification and consensus read: ``gamma``
    #: (outliers), ``seed`` (random, della), ``epsilon`` (della), ``consensus_method``.
    params: _GTAParams

    def sparsify(self, name: str, index: int, delta: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.sparsification is None or p.density >= 1:
            return delta
        if self.sparsification == "magnitude":
            kept = sparsify_magnitude(delta, p.density)
        elif self.sparsification == "outliers":
            assert isinstance(p, _BreadcrumbsParams)
            kept = sparsify_outliers(delta, p.density, p.gamma)
        else:
            assert isinstance(p, _RandomParams)
            gen = generator(delta.device, tensor_seed(p.seed, name, index))
            if self.sparsification == "random":
                kept = sparsify_random(delta, p.density, gen)
            else:
                assert isinstance(p, _DellaLinearParams)
                kept = sparsify_della(delta, p.density, p.epsilon, gen)
        return rescale_l1(delta, kept) if p.rescale else kept

    def merge_tensor(self, name: str, base: torch.Tensor, components: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        p = self.params
        deltas = torch.stack([self.sparsify(name, i, components[i] - base) for i in range(components.shape[0])])
        w = weights.to(deltas.dtype).view(-1, *([1] * base.dim()))
        weighted = deltas * w
        if self.consensus:
            assert isinstance(p, _ConsensusParams)
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


class _DellaCheck(GeneralizedTaskArithmetic):
    """DELLA's range check of density +/- epsilon (a base of both DELLA methods, not registered)."""

    params: _DellaLinearParams

    def _check(self) -> None:
        p = self.params
        if p.density < 1 and not (0 < p.density - p.epsilon and p.density + p.epsilon < 1):
            raise DemixError(
                f"merge method '{self.name}': density +/- epsilon must lie in (0, 1), got density={p.density}, epsilon={p.epsilon}",
                "lower epsilon or move density away from 0 and 1",
            )


@register
class Della(_DellaCheck):
    name = "della"
    summary = "DELLA: magnitude-ranked random drop (density +/- epsilon), rescale, sign consensus"
    Params = _DellaParams
    consensus = True
    sparsification = "della"


@register
class DellaLinear(_DellaCheck):
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
    params: _SlerpParams
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
    params: _MultiSlerpParams

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
