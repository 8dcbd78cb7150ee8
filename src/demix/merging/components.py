"""The component set: a base and K components loaded once, checked, and kept flat for merging.

Layout. Tensors are grouped by stored dtype (almost always one group). Per group, the base is
one flat 1-D buffer and the components one ``[K, n]`` buffer, both in the stored dtype on the
chosen device; tensor ``name`` is the slice ``[offset, offset + numel)`` of its group. A linear
proxy is then one pass over these buffers (:func:`~demix.merging.kernel.linear_combine`),
and per-tensor views serve the other methods.

Why components and not deltas: the stored components plus the base hold the same information
as base plus deltas and cost the same memory and bandwidth ((K + 1) reads per proxy), but a
delta rounded to bf16 loses bits that ``theta_i - base`` computed in fp32 keeps. Deltas are
formed in fp32 when a method needs them (:meth:`ComponentSet.deltas`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from demix.checkpoints import check_compatible
from demix.errors import DemixError
from demix.merging.checkpoint import Checkpoint, check_finite

log = logging.getLogger("demix.merging")


@dataclass(frozen=True)
class Slot:
    """Where a tensor lives in the flat buffers."""

    group: torch.dtype
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class ComponentSet:
    """A base and its components, checked compatible and resident on one device.

    Use :meth:`load`; ``domains`` lists the component names in mixture order.
    """

    def __init__(
        self,
        base_dir: Path,
        component_dirs: dict[str, Path],
        base_config: dict,
        slots: dict[str, Slot],
        base_flat: dict[torch.dtype, torch.Tensor],
        comp_flat: dict[torch.dtype, torch.Tensor],
        device: torch.device,
    ) -> None:
        self.base_dir = base_dir
        self.component_dirs = component_dirs
        self.base_config = base_config
        self.slots = slots
        self.base_flat = base_flat
        self.comp_flat = comp_flat
        self.device = device

    @property
    def domains(self) -> list[str]:
        return list(self.component_dirs)

    @property
    def names(self) -> list[str]:
        """Tensor names in the base's order."""
        return list(self.slots)

    @property
    def num_parameters(self) -> int:
        return sum(s.numel for s in self.slots.values())

    @property
    def nbytes(self) -> int:
        """Bytes of one model's parameters as stored."""
        return sum(t.numel() * t.element_size() for t in self.base_flat.values())

    @classmethod
    def load(
        cls,
        base_dir: str | Path,
        components: Mapping[str, str | Path],
        device: str | torch.device = "cpu",
        check_values: bool = True,
    ) -> ComponentSet:
        """Read the base and the components (``{domain: checkpoint dir}``) onto ``device``.

        Checks, each a DemixError naming the first offending file or tensor: readable
        safetensors (no pickles), all shards present, same architecture, vocabulary, tensor
        names and shapes, and (``check_values``) no NaN/Inf anywhere.
        """
        if not components:
            raise DemixError("no components to merge", "give at least one component checkpoint per domain")
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DemixError(f"device '{device}' is not available", "use device='cpu' or run on a machine with a GPU")
        base = Checkpoint.open(base_dir, "base")
        comps = {d: Checkpoint.open(p, f"component '{d}'") for d, p in components.items()}
        check_compatible(base.layout, {d: c.layout for d, c in comps.items()})

        # Groups by stored dtype; components stored wider than the base widen the group so
        # nothing is rounded on load.
        slots: dict[str, Slot] = {}
        sizes: dict[torch.dtype, int] = {}
        for name, info in base.tensors.items():
            dtype = info.dtype
            for c in comps.values():
                dtype = torch.promote_types(dtype, c.tensors[name].dtype)
            off = sizes.get(dtype, 0)
            slots[name] = Slot(dtype, off, info.shape)
            sizes[dtype] = off + info.numel
        k = len(comps)
        base_flat = {g: torch.empty(n, dtype=g, device=device) for g, n in sizes.items()}
        comp_flat = {g: torch.empty((k, n), dtype=g, device=device) for g, n in sizes.items()}
        for name, slot in slots.items():
            sl = slice(slot.offset, slot.offset + slot.numel)
            t = base.get(name)
            if check_values:
                check_finite(t, name, f"the base ({base.path})")
            base_flat[slot.group][sl].copy_(t.reshape(-1))
            for i, (domain, c) in enumerate(comps.items()):
                t = c.get(name)
                if check_values:
                    check_finite(t, name, f"component '{domain}' ({c.path})")
                comp_flat[slot.group][i, sl].copy_(t.reshape(-1))
        log.info(
            "loaded base %s and %d components (%s parameters each) on %s", base.path, k, f"{sum(sizes.values()):,}", device
        )
        return cls(
            Path(base_dir),
            {d: Path(p) for d, p in components.items()},
            base.config,
            slots,
            base_flat,
            comp_flat,
            device,
        )

    # ------------------------------------------------------------------ per-tensor views

    def base_tensor(self, name: str) -> torch.Tensor:
        """The base's tensor ``name`` (a view, stored dtype)."""
        s = self.slots[name]
        return self.base_flat[s.group][s.offset : s.offset + s.numel].view(s.shape)

    def component_tensors(self, name: str) -> torch.Tensor:
        """The components' tensors ``name`` stacked, ``[K, *shape]`` (a view, stored dtype)."""
        s = self.slots[name]
        return self.comp_flat[s.group][:, s.offset : s.offset + s.numel].view(-1, *s.shape)

    def deltas(self, name: str) -> torch.Tensor:
        """``component_i - base`` for tensor ``name``, fp32, ``[K, *shape]``."""
        return self.component_tensors(name).float() - self.base_tensor(name).float()

    def describe(self) -> str:
        gib = self.nbytes * (len(self.domains) + 1) / 2**30
        return (
            f"{len(self.domains)} components ({', '.join(self.domains)}) of {self.num_parameters:,} parameters, "
            f"{gib:.2f} GiB resident on {self.device}"
        )
