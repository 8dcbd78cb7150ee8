"""The proxy builder: writes the proxy for a mixture into one resident HF model, in place.

The model's parameters are views into flat buffers laid out like the component set's, so a
linear proxy is one pass of :func:`~demix.merging.kernel.linear_combine` per dtype group:
(K + 1) reads and one write of the parameters, fp32 accumulation, one cast. Other methods
write tensor by tensor into the same views. No disk writes, no new model per proxy: a second
:meth:`ProxyBuilder.build` reuses everything.
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
from demix.merging.components import ComponentSet
from demix.merging.kernel import linear_combine
from demix.merging.methods import MergeMethod, get_method
from demix.mixtures import validate_mixture

if TYPE_CHECKING:
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
        seen: dict[int, str] = {}
        for name, slot in components.slots.items():
            if name not in state:
                raise DemixError(
                    f"checkpoint tensor '{name}' is not a parameter of the {type(model).__name__} built from {components.base_dir}",
                    "the config.json and the weights disagree: save the checkpoint again",
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
        uncovered = [n for n, p in model.named_parameters() if id(p) not in seen]
        if uncovered:
            raise DemixError(
                f"model parameter '{uncovered[0]}' is not in the checkpoint {components.base_dir}",
                "the checkpoint is incomplete: save it again",
            )
        self.model = model
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
        self.mixture = {d: float(x) for d, x in zip(self.domains, w.tolist())}
        return self.model

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The current proxy's tensors by checkpoint name (views, not copies)."""
        return dict(self._views)
