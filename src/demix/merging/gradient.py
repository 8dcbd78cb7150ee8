"""Gradients through the merge: ``d f / d a_i = <grad_theta f(theta(a)), delta_i>``.

A linear proxy is ``theta(a) = base + sum_i a_i delta_i`` with ``delta_i = component_i - base``,
so for any differentiable function ``f`` of the proxy's parameters (a held-out loss, the
log-likelihood of answers) the derivative with respect to every component weight comes from one
backward pass: the parameter gradient dotted with each delta.

Memory. No second model is materialised: each parameter's gradient is consumed by a hook the
moment autograd has finished accumulating it (``register_post_accumulate_grad_hook``), dotted
with the K deltas of that tensor, and freed. The deltas are formed in fp32 from the resident
components (``component.float() - base.float()``, as :meth:`ComponentSet.deltas` does) in
chunks of at most :data:`DOT_CHUNK` elements, so the extra memory is one tensor's gradient plus
``K x DOT_CHUNK`` fp32 values, whatever the model size. Products are fp32 within a chunk and
summed in fp64 across chunks, tensors and backward passes (a sum over millions of terms).

The derivative is that of ``f(base + sum_i a_i delta_i)`` as a function on R^K. On the simplex
only directions with ``sum_i v_i = 0`` are feasible: ``g @ v`` is then the directional
derivative, and adding a constant to every entry of ``g`` changes nothing there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from demix.errors import DemixError

if TYPE_CHECKING:
    import torch

    from demix.merging.builder import ProxyBuilder

#: Elements of one tensor dotted with the K deltas at a time: bounds the fp32 delta buffer to
#: K x 4 MiB (and keeps each product in fp32 over at most 2^20 terms before the fp64 sum).
DOT_CHUNK = 1 << 20


def check_linear(builder: ProxyBuilder) -> None:
    """Refuse merge methods for which ``theta(a)`` is not ``base + sum_i a_i delta_i``: only
    ``linear`` (with a mixture, its weights sum to 1) is affine in the component weights."""
    if builder.method.name != "linear":
        raise DemixError(
            f"gradients through the merge need merge.method 'linear'; '{builder.method.name}' is not affine in the "
            "component weights",
            "set merge.method: linear (the DeMix proxy), or turn search.refine off",
        )


class MergeGradient:
    """While entered, every backward pass through ``builder.model`` adds
    ``<grad_theta, delta_i>`` (i over the components, in ``builder.domains`` order) to an fp64
    accumulator and frees the parameter gradients; :meth:`take` returns and resets it.

        with MergeGradient(builder) as mg:
            loss(builder.model).backward()
            g = mg.take()          # (K,) float64: d loss / d a

    On exit the parameters are frozen again (``requires_grad`` False, as the builder keeps them)
    and the hooks removed. Parameters tied to another (``lm_head`` = ``embed_tokens``) are one
    parameter: their gradient holds both uses and is counted once.
    """

    def __init__(self, builder: ProxyBuilder) -> None:
        check_linear(builder)
        self.builder = builder
        self._handles: list[Any] = []
        self._params: list[torch.nn.Parameter] = []
        self._acc: torch.Tensor | None = None

    def __enter__(self) -> MergeGradient:
        import torch

        cs = self.builder.components
        state = self.builder.model.state_dict(keep_vars=True)
        # Checkpoint tensors transformers placed inside another parameter on load (stacked MoE
        # experts, GPT-NeoX's embed_out as lm_head): their gradient is a slice of that parameter's.
        pieces = self.builder.parameter_pieces()
        segments: dict[int, tuple[torch.nn.Parameter, list[tuple[int, torch.Tensor, torch.Tensor]]]] = {}
        owned: set[int] = set()
        for name, slot in cs.slots.items():
            p = state.get(name)
            start = 0
            if name in pieces:
                p, start = pieces[name]
            elif not isinstance(p, torch.nn.Parameter) or id(p) in owned:
                continue  # buffers, tied duplicates (the first name owns the tensor, as in the builder)
            if not isinstance(p, torch.nn.Parameter) or not p.is_floating_point():
                continue
            if name not in pieces:
                owned.add(id(p))
            base = cs.base_flat[slot.group][slot.offset : slot.offset + slot.numel]
            comps = cs.comp_flat[slot.group][:, slot.offset : slot.offset + slot.numel]
            segments.setdefault(id(p), (p, []))[1].append((start, base, comps))
        self._acc = torch.zeros(len(cs.domains), dtype=torch.float64, device=cs.device)
        for p, segs in segments.values():
            p.requires_grad_(True)
            self._params.append(p)
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook(segs)))
        return self

    def _hook(self, segments: list[tuple[int, torch.Tensor, torch.Tensor]]) -> Callable[[torch.Tensor], None]:
        import torch

        def hook(p: torch.Tensor) -> None:
            assert self._acc is not None and p.grad is not None
            with torch.no_grad():
                flat = p.grad.reshape(-1)
                for start, base, comps in segments:
                    n = base.numel()
                    g = flat[start : start + n]
                    for lo in range(0, n, DOT_CHUNK):
                        hi = min(lo + DOT_CHUNK, n)
                        # delta in fp32 from the stored tensors (never a bf16 difference), fp32 dot
                        # per chunk, fp64 running sum.
                        d = comps[:, lo:hi].float() - base[lo:hi].float()
                        self._acc += (d @ g[lo:hi].float()).double()
            p.grad = None  # consumed: no parameter keeps a gradient, so memory stays one tensor's

        return hook

    def take(self) -> np.ndarray:
        """The accumulated ``d f / d a`` (K,) float64 since the last call, and reset it."""
        assert self._acc is not None, "use MergeGradient as a context manager"
        out = self._acc.cpu().numpy().copy()
        self._acc.zero_()
        return out

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        for p in self._params:
            p.grad = None
            p.requires_grad_(False)
        self._handles, self._params = [], []


def merge_gradient(
    builder: ProxyBuilder, mixture: Mapping[str, float], closure: Callable[[Any], Any]
) -> tuple[Any, np.ndarray]:
    """Build the proxy of ``mixture`` and return ``(closure's value, d f / d a)``.

    ``closure(model)`` computes ``f`` on the resident proxy and calls ``.backward()`` on it
    itself (once, or once per batch: the derivative of a sum is the sum of the derivatives, and
    activations are then freed batch by batch). The derivative is (K,) float64 in
    ``builder.domains`` order. The model is in eval mode (no dropout) during the call.
    """
    import torch

    model = builder.build(mixture)
    was_training = model.training
    model.eval()
    try:
        with MergeGradient(builder) as mg, torch.enable_grad():
            value = closure(model)
            grad = mg.take()
    finally:
        model.train(was_training)
    return value, grad
