"""Reading checkpoints tensor by tensor, and naming the tensor group of a parameter.

Weights are read from safetensors only (``safe_open``, memory-mapped, one tensor at a time);
nothing is unpickled. A checkpoint is an HF directory with ``model.safetensors`` or a sharded
``model.safetensors.index.json``; an in-memory ``{name: tensor}`` mapping (e.g. a resident
proxy's ``state_dict()``) is accepted wherever a directory is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from demix.checkpoints import shard_map
from demix.errors import DemixError

#: Tensor groups, in the order their patterns are tried (first match wins). Patterns match
#: dotted parameter names of Llama / Qwen / Mistral (``model.layers.0.self_attn.q_proj``),
#: GPT-2 (``transformer.h.0.attn.c_attn``, ``ln_1``, ``wte``), GPT-NeoX (``embed_in``,
#: ``attention.query_key_value``, ``embed_out``) and Falcon / BLOOM style names.
GROUP_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "embeddings",
        re.compile(r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|tok_embeddings|embed_in|position_embeddings|embed_positions)(\.|$)"),
    ),
    ("lm_head", re.compile(r"(^|\.)(lm_head|embed_out)(\.|$)|^output\.weight$")),
    ("norms", re.compile(r"(^|\.)([a-z_]*norm[a-z_0-9]*|ln_\w+|ln_f)(\.|$)")),
    (
        "attention",
        re.compile(
            r"(^|\.)(self_attn|attn|attention|self_attention)(\.|$)"
            r"|(^|\.)(q_proj|k_proj|v_proj|o_proj|c_attn|query_key_value|qkv_proj|wqkv)(\.|$)"
        ),
    ),
    (
        "mlp",
        re.compile(
            r"(^|\.)(mlp|feed_forward|ffn)(\.|$)"
            r"|(^|\.)(gate_proj|up_proj|down_proj|c_fc|fc1|fc2|dense_h_to_4h|dense_4h_to_h|w1|w2|w3)(\.|$)"
        ),
    ),
)

GROUPS = tuple(g for g, _ in GROUP_PATTERNS) + ("other",)


def tensor_group(name: str) -> str:
    """The group of a parameter name: embeddings, lm_head, norms, attention, mlp or other."""
    for group, pattern in GROUP_PATTERNS:
        if pattern.search(name):
            return group
    return "other"


def _tensor_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of an HF checkpoint directory, in the order of the files
    and of the names in each file's header (an index names the tensors of each shard)."""
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for file, indexed in shard_map(directory).items():
        try:
            with safe_open(str(file), framework="numpy") as fh:  # the header only: no torch needed
                names = list(fh.keys())
        except Exception as exc:  # safetensors raises its own error types for truncated files
            raise DemixError(f"checkpoint file '{file}' is unreadable ({exc})", "re-save or re-copy the checkpoint") from None
        out.update((name, file) for name in names if indexed is None or name in indexed)
    return out


class TensorSource:
    """Named tensors of one checkpoint, read lazily one at a time.

    Use as a context manager; :meth:`get` returns the tensor in its stored dtype.
    """

    def __init__(self, source: str | Path | Mapping[str, Any], label: str | None = None) -> None:
        self._mapping: Mapping[str, Any] | None = None
        self._files: dict[str, Path] = {}
        if isinstance(source, Mapping):
            self._mapping = source
            self.label = label or "<in-memory model>"
        else:
            self.path = Path(source)
            self.label = label or str(self.path)
            self._files = _tensor_files(self.path)
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._handles.clear()

    def names(self) -> list[str]:
        return list(self._mapping) if self._mapping is not None else list(self._files)

    def __contains__(self, name: str) -> bool:
        return name in (self._mapping if self._mapping is not None else self._files)

    def _handle(self, path: Path) -> Any:
        if path not in self._handles:
            from safetensors import safe_open

            if not path.is_file():
                raise DemixError(f"checkpoint shard '{path}' is missing", "re-copy the whole checkpoint directory")
            self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[path]

    def shape(self, name: str) -> tuple[int, ...]:
        if self._mapping is not None:
            return tuple(self._mapping[name].shape)
        return tuple(self._handle(self._files[name]).get_slice(name).get_shape())

    def get(self, name: str):
        """The tensor ``name`` (a torch.Tensor), or a DemixError naming the checkpoint."""
        if name not in self:
            raise DemixError(
                f"tensor '{name}' is missing from {self.label}",
                "all checkpoints must share the base's architecture (same parameter names)",
            )
        if self._mapping is not None:
            return self._mapping[name].detach()
        try:
            return self._handle(self._files[name]).get_tensor(name)
        except DemixError:
            raise
        except Exception as exc:
            raise DemixError(f"tensor '{name}' of {self.label} is unreadable ({exc})", "re-save or re-copy the checkpoint") from None
