"""The proxy builder: writes the proxy for a mixture into one resident HF model, in place.

The model's parameters are views into flat buffers laid out like the component set's, so a
linear proxy is one pass of :func:`~demix.merging.kernel.linear_combine` per dtype group:
(K + 1) reads and one write of the parameters, fp32 accumulation, one cast. Other methods
write tensor by tensor into the same views. No disk writes, no new model per proxy: a second
:meth:`ProxyBuilder.build` reuses everything.

Parameters transformers assembles from several checkpoint tensors on load (the stacked experts
of MoE layers) cannot be views of the checkpoint-ordered buffers: each such checkpoint tensor is
merged into the buffers like any other and then copied into its slice of the parameter, one
extra read and write of those tensors per proxy (:func:`_converted_placements`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from demix.checkpoints import base_dir, check_loadable, component_dirs, resolve_device
from demix.errors import DemixError
from demix.merging.checkpoint import parse_dtype
from demix.merging.components import ComponentSet, Slot
from demix.merging.kernel import linear_combine
from demix.merging.methods import MergeMethod, get_method
from demix.mixtures import validate_mixture

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from demix.config import RunConfig
    from demix.rundir import RunDir

log = logging.getLogger("demix.merging")


def run_checkpoints(config: RunConfig, run: RunDir) -> tuple[Path, dict[str, Path]]:
    """The base and the component directories of a run (:func:`demix.checkpoints.base_dir`,
    :func:`~demix.checkpoints.component_dirs`), checked to exist: a DemixError names the
    missing ones and how to make them. The given ones (``model.base_path``,
    ``train.components.paths``) are checked first, as every verb does
    (:func:`demix.training.roles.check_given_checkpoints`)."""
    from demix.training.roles import check_given_checkpoints

    check_given_checkpoints(config, run)
    base = base_dir(config, run)
    comps = component_dirs(config, run)
    missing = [d for d, p in comps.items() if not p.is_dir()]
    if missing:
        raise DemixError(
            f"no component checkpoint for domain(s) {missing} (looked in {[str(comps[d]) for d in missing]})",
            "train them first (`demix train components CONFIG`) or set train.components.paths.<domain>",
        )
    if not base.is_dir():
        raise DemixError(f"no base checkpoint at '{base}'", "train it (`demix train base CONFIG`) or set model.base_path")
    return base, comps


class ProxyBuilder:
    """One resident HF causal LM into which proxies are merged.

    ``method`` and ``params`` pick a registered merge method (linear is the fast path);
    ``dtype`` is the proxy's dtype (``auto``: as stored); ``normalize`` rescales mixtures that
    do not sum to 1 instead of rejecting them.
    """

    def __init__(
        self,
        components: ComponentSet,
        method: str = "linear",
        params: Mapping[str, Any] | None = None,
        dtype: str = "auto",
        normalize: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.components = components
        self.method: MergeMethod = get_method(method, dict(params or {}))
        if not self.method.uses_weights:
            raise DemixError(
                f"merge method '{method}' ignores the per-model weights, so every mixture gives the same proxy",
                "use a weighted method for mixture search (linear, ties, ...)",
            )
        self.method.check_weights(torch.ones(len(components.domains)))
        self.normalize = normalize
        self.mixture: dict[str, float] | None = None
        want = parse_dtype(dtype)

        check_loadable(components.base_dir, trust_remote_code, "base")  # custom code: name the setting, run nothing
        model = AutoModelForCausalLM.from_pretrained(
            components.base_dir,
            dtype=want if want is not None else "auto",
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
        )
        # transformers decorates PreTrainedModel.to with functools.wraps(nn.Module.to), which
        # mypy types as the unbound Module.to (the device taken for self).
        model.to(components.device)  # type: ignore[arg-type]
        model.eval()
        model.requires_grad_(False)

        # One flat output buffer per source group; every parameter becomes a view into it.
        self._out_flat = {
            g: torch.empty(flat.numel(), dtype=want or g, device=components.device) for g, flat in components.base_flat.items()
        }
        state = model.state_dict(keep_vars=True)
        placed = _converted_placements(model, components.slots, state)
        # (slice of a converted parameter, its piece of the proxy): copied after every build.
        self._copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        covered: dict[int, int] = {}  # id(parameter) -> elements filled by copies
        seen: dict[int, str] = {}
        for name, slot in components.slots.items():
            if name in placed:
                param, start = placed[name]
                dst = param.data.view(-1)[start : start + slot.numel]
                src = self._out_flat[slot.group][slot.offset : slot.offset + slot.numel]
                src.copy_(dst)
                self._copies.append((dst, src))
                covered[id(param)] = covered.get(id(param), 0) + slot.numel
                continue
            if name not in state:
                raise DemixError(
                    f"checkpoint tensor '{name}' is not a parameter of the {_architecture(model)} built from "
                    f"{components.base_dir}, and transformers maps it to none",
                    "the config.json and the weights disagree, or demix cannot merge this architecture in place: "
                    "save the checkpoint again with this transformers version",
                )
            target = state[name]
            if id(target) in seen:  # tied (e.g. lm_head = embed_tokens): the first name owns it
                continue
            seen[id(target)] = name
            if tuple(target.shape) != slot.shape:
                raise DemixError(f"checkpoint tensor '{name}' has shape {list(slot.shape)}, the model's is {list(target.shape)}")
            view = self._out_flat[slot.group][slot.offset : slot.offset + slot.numel].view(slot.shape)
            view.copy_(target.detach())
            target.data = view
        uncovered = [n for n, p in model.named_parameters() if id(p) not in seen and covered.get(id(p)) != p.numel()]
        if uncovered:
            raise DemixError(
                f"model parameter '{uncovered[0]}' is not in the checkpoint {components.base_dir}",
                "the checkpoint is incomplete: save it again",
            )
        self.model = model
        self._placed = placed
        self._views = {n: self._out_flat[s.group][s.offset : s.offset + s.numel].view(s.shape) for n, s in components.slots.items()}

    @classmethod
    def from_run(
        cls,
        config: RunConfig,
        run: RunDir,
        device: str | torch.device | None = None,
        method: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> ProxyBuilder:
        """The builder for a run directory: base and components from :func:`run_checkpoints`,
        method, params, dtype and normalisation from ``config.merge`` (``method``/``params``
        override them), device from ``device`` or ``config.evaluation.device``."""
        base, comps = run_checkpoints(config, run)
        check_loadable(base, config.model.trust_remote_code, "base")  # before K + 1 checkpoints are read
        dev = torch.device(resolve_device(str(device) if device is not None else config.evaluation.device, "evaluation.device"))
        components = ComponentSet.load(base, comps, device=dev)
        return cls(
            components,
            method=method or config.merge.method,
            params=dict(params) if params is not None else dict(config.merge.params),
            dtype=config.merge.dtype,
            normalize=config.merge.normalize,
            trust_remote_code=config.model.trust_remote_code,
        )

    @property
    def domains(self) -> list[str]:
        return self.components.domains

    def weights(self, mixture: Mapping[str, float]) -> torch.Tensor:
        """The validated mixture as fp32 weights in component order."""
        w = validate_mixture(mixture, self.domains, self.normalize)
        return torch.tensor([w[d] for d in self.domains], dtype=torch.float64)

    @torch.no_grad()
    def build(self, mixture: Mapping[str, float]):
        """Write the proxy for ``mixture`` (``{domain: weight}``) into :attr:`model` and return it."""
        w = self.weights(mixture)
        self.method.check_weights(w)
        cs = self.components
        coefs = self.method.coefficients(w)
        if coefs is not None:
            for g, out in self._out_flat.items():
                if not g.is_floating_point:
                    continue  # integer buffers keep the base's values
                linear_combine(out, cs.base_flat[g], list(cs.comp_flat[g].unbind(0)), coefs[0], coefs[1])
        else:
            w32 = w.to(torch.float32, copy=True).to(cs.device)
            for name, view in self._views.items():
                if not view.is_floating_point():
                    continue
                merged = self.method.merge_tensor(name, cs.base_tensor(name).float(), cs.component_tensors(name).float(), w32)
                view.copy_(merged)
        for dst, src in self._copies:  # parameters transformers fuses from several checkpoint tensors
            dst.copy_(src)
        self.mixture = {d: float(x) for d, x in zip(self.domains, w.tolist())}
        return self.model

    def parameter_pieces(self) -> dict[str, tuple[torch.nn.Parameter, int]]:
        """Checkpoint tensors that are not one model parameter of the same name, each as (the
        parameter holding it, its first element in the flattened parameter): MoE experts
        transformers stacks into one tensor, renamed heads (GPT-NeoX ``embed_out``). Empty for
        most dense models; code that maps checkpoint names to parameters must use it."""
        return dict(self._placed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The current proxy's tensors by checkpoint name (views, not copies)."""
        return dict(self._views)


def _architecture(model: torch.nn.Module) -> str:
    """The model's class and ``model_type`` as errors name them: ``Qwen3MoeForCausalLM ('qwen3_moe')``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"{type(model).__name__} ('{model_type}')" if model_type else type(model).__name__


def _converted_placements(
    model: PreTrainedModel, slots: Mapping[str, Slot], state: Mapping[str, torch.Tensor]
) -> dict[str, tuple[torch.nn.Parameter, int]]:
    """Where checkpoint tensors that are no parameter of the same name live in the model.

    transformers 5 converts some checkpoints on load: MoE experts stored one tensor per expert
    become one stacked parameter per layer (Qwen3-MoE, OLMoE, Mixtral), some heads are renamed
    (GPT-NeoX ``embed_out`` -> ``lm_head``). Rather than re-implement each architecture's rules,
    each such parameter is filled with its own element indices and run through transformers'
    reverse conversion (the one ``save_pretrained`` uses): the checkpoint tensor that comes back
    holding the indices ``start .. start + n - 1`` in order is that contiguous slice of the
    parameter. A conversion that reorders elements (a transpose, an interleave) cannot be a
    slice: a DemixError names the architecture and the tensor.
    """
    names = set(slots)
    params = [(n, p) for n, p in model.named_parameters() if n not in names]
    if not params or all(n in state for n in names):
        return {}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without load-time conversions: names must match
        return {}
    placed: dict[str, tuple[torch.nn.Parameter, int]] = {}
    for pname, param in params:
        dtype = torch.int32 if param.numel() < 2**31 else torch.int64  # half the memory of the probe
        probe = torch.arange(param.numel(), dtype=dtype).view(param.shape)
        try:
            pieces = revert_weight_conversion(model, {pname: probe})
        except Exception as exc:  # transformers' own conversion failed: name the architecture, not its traceback
            raise DemixError(
                f"transformers cannot map the {_architecture(model)} parameter '{pname}' back to checkpoint tensors ({exc})",
                "demix cannot merge this architecture in place with this transformers version",
            ) from None
        for cname, idx in pieces.items():
            if cname not in slots or cname in state:
                continue
            flat = idx.reshape(-1)
            start = int(flat[0])
            in_order = bool(torch.equal(flat, torch.arange(start, start + flat.numel(), dtype=flat.dtype)))
            if tuple(idx.shape) != slots[cname].shape or not in_order:
                raise DemixError(
                    f"the {_architecture(model)} checkpoint tensor '{cname}' is not stored as a contiguous slice of the "
                    f"model parameter '{pname}' (transformers reorders it on load), so demix cannot merge it in place",
                    "this architecture is not supported by the in-memory proxy builder; open an issue naming it",
                )
            placed[cname] = (param, start)
    return placed
