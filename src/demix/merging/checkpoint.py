"""Reading and writing HF checkpoint directories as safetensors, one tensor at a time.

Reading: :class:`Checkpoint` indexes a directory (``model.safetensors`` or the shards named by
``model.safetensors.index.json``) from the headers alone, memory-mapped through
``safetensors.safe_open``; nothing is unpickled, ever. Every problem (no safetensors, a missing
or truncated shard, a corrupt header) is a :class:`~demix.errors.DemixError` naming the file.

Writing: :class:`ShardedWriter` writes a sharded safetensors checkpoint *streaming*: the shard
plan and every header are known up front (names, shapes and dtypes come from the inputs'
headers), so each tensor's bytes are appended as soon as it is merged and never held with the
others. The safetensors library only writes whole dicts of tensors, which would hold a shard in
memory; the format itself is a little-endian u64 header length, a JSON header and the raw bytes
(https://github.com/huggingface/safetensors#format), so the writer here is a few lines. Files
are written into a staging directory that replaces the output only when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from demix.errors import DemixError
from demix.rundir import atomic_write_text, write_json

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

#: safetensors dtype codes <-> torch dtypes (the ones LLM checkpoints use).
ST_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_ST = {v: k for k, v in ST_TO_TORCH.items()}

#: Files copied next to a merged model so that it loads with its tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype | None:
    """``"auto"`` -> None (keep the checkpoint's dtype); ``"float32"`` etc. -> torch dtype."""
    if name == "auto":
        return None
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise DemixError(f"unknown dtype '{name}'", f"use one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it looks like (from the safetensors header)."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass
class Checkpoint:
    """An HF checkpoint directory indexed from its safetensors headers (no tensor is read).

    ``tensors`` keeps the order of the files (and of names inside each file) so merged outputs
    list tensors in the base's order.
    """

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path, role: str = "checkpoint") -> "Checkpoint":
        """Index ``path``; ``role`` (base, component 'math', ...) names it in errors."""
        path = Path(path)
        if not path.is_dir():
            raise DemixError(f"{role} directory '{path}' does not exist", "pass an HF checkpoint directory")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise DemixError(
                f"{role} '{path}' has no config.json", "pass a Hugging Face model directory (save_pretrained writes one)"
            )
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise DemixError(f"{role} '{config_file}' is not valid JSON ({exc})", "restore the file") from None
        files = _safetensors_files(path, role)
        tensors: dict[str, TensorInfo] = {}
        handles = {}
        for file, expected in files:
            try:
                handle = safe_open(str(file), framework="pt", device="cpu")
            except (SafetensorError, OSError) as exc:
                raise DemixError(
                    f"{role} file '{file}' is not a readable safetensors file ({exc})",
                    "the file is truncated or corrupt: copy or save the checkpoint again",
                ) from None
            handles[file] = handle
            names = list(handle.keys())
            if expected is not None:
                missing = sorted(set(expected) - set(names))
                if missing:
                    raise DemixError(
                        f"{role} shard '{file}' lacks tensor '{missing[0]}' that {INDEX_NAME} places there",
                        "the index and the shards disagree: save the checkpoint again",
                    )
            for name in names:
                if expected is not None and name not in expected:
                    continue  # the index is the source of truth for sharded checkpoints
                sl = handle.get_slice(name)
                st_dtype = sl.get_dtype()
                if st_dtype not in ST_TO_TORCH:
                    raise DemixError(f"{role} tensor '{name}' in '{file}' has unsupported dtype {st_dtype}")
                tensors[name] = TensorInfo(name, file, tuple(sl.get_shape()), ST_TO_TORCH[st_dtype])
        if not tensors:
            raise DemixError(f"{role} '{path}' holds no tensors", "pass a checkpoint with weights")
        return cls(path=path, config=config, tensors=tensors, _handles=handles)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (a CPU copy out of the memory map)."""
        info = self.tensors[name]
        return self._handles[info.file].get_tensor(name)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def files(self) -> list[Path]:
        return sorted({t.file for t in self.tensors.values()})


def _safetensors_files(path: Path, role: str) -> list[tuple[Path, set[str] | None]]:
    """The safetensors files of a checkpoint, with the names the index assigns to each."""
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DemixError(f"{role} index '{index}' is not a valid safetensors index ({exc!r})", "save the checkpoint again") from None
        by_file: dict[str, set[str]] = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, set()).add(name)
        out = []
        for fname in sorted(by_file):
            file = path / fname
            if not file.is_file():
                raise DemixError(
                    f"{role} shard '{file}' named by {INDEX_NAME} is missing",
                    "copy the missing shard into the directory (or save the checkpoint again)",
                )
            out.append((file, by_file[fname]))
        return out
    single = path / SINGLE_NAME
    if single.is_file():
        return [(single, None)]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return [(f, None) for f in others]
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        raise DemixError(
            f"{role} '{path}' has only pickled weights (.bin/.pt); demix reads safetensors only",
            "convert it once: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)",
        )
    raise DemixError(f"{role} '{path}' has no safetensors weights", "pass a directory holding model.safetensors")


# --------------------------------------------------------------------------- compatibility

#: config.json keys that must agree between base and components (shapes catch the rest).
_CONFIG_KEYS = ("model_type", "architectures", "vocab_size", "tie_word_embeddings")


def check_compatible(base: Checkpoint, components: Mapping[str, Checkpoint]) -> None:
    """Raise a DemixError naming the first difference between the base and a component:
    architecture, vocabulary, tensor names, shapes (dtypes may differ: merging is in fp32)."""
    for domain, comp in components.items():
        who = f"component '{domain}' ({comp.path})"
        for key in _CONFIG_KEYS:
            if base.config.get(key) != comp.config.get(key):
                raise DemixError(
                    f"{who} has config.json {key}={comp.config.get(key)!r} but the base ({base.path}) has {base.config.get(key)!r}",
                    "merge only components trained from this base (same architecture and tokenizer)",
                )
        missing = [n for n in base.tensors if n not in comp.tensors]
        if missing:
            raise DemixError(
                f"{who} lacks tensor '{missing[0]}' of the base ({len(missing)} missing)",
                "merge only components trained from this base (same architecture)",
            )
        extra = [n for n in comp.tensors if n not in base.tensors]
        if extra:
            raise DemixError(
                f"{who} has tensor '{extra[0]}' that the base lacks ({len(extra)} extra)",
                "merge only components trained from this base (same architecture)",
            )
        for name, info in base.tensors.items():
            other = comp.tensors[name]
            if other.shape != info.shape:
                raise DemixError(
                    f"{who} tensor '{name}' has shape {list(other.shape)}, the base has {list(info.shape)}",
                    "merge only components with the base's architecture and vocabulary",
                )
            if other.dtype.is_floating_point != info.dtype.is_floating_point:
                raise DemixError(f"{who} tensor '{name}' is {other.dtype}, the base's is {info.dtype}")


def check_finite(tensor: torch.Tensor, name: str, where: str) -> None:
    """NaN or Inf in a checkpoint poisons every proxy: name the tensor and the checkpoint."""
    # One reduction (min/max propagate NaN; +-Inf is its own max/min): several times faster
    # than isfinite().all(), which takes a slow path on bf16.
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise DemixError(
            f"tensor '{name}' of {where} holds {bad} NaN/Inf value(s)",
            "this checkpoint is broken (diverged training or a bad conversion): retrain or re-save it",
        )


def weights_hash(path: str | Path) -> str:
    """A content hash of a checkpoint's safetensors files (16 hex characters).

    Recorded as ``base_hash`` in merged checkpoints so a proxy names the exact base it came from.
    """
    h = hashlib.sha256()
    ckpt_dir = Path(path)
    files = [f for f, _ in _safetensors_files(ckpt_dir, "checkpoint")]
    for file in files:
        h.update(file.name.encode())
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- writing


def parse_size(text: str | int) -> int:
    """``"2GB"``, ``"500MB"``, ``"1.5GiB"`` or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().replace(" ", "")
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "K": 10**3, "M": 10**6, "G": 10**9, "B": 1}
    for unit, mult in units.items():
        if s.endswith(unit):
            try:
                return int(float(s[: -len(unit)]) * mult)
            except ValueError:
                break
    try:
        return int(s)
    except ValueError:
        raise DemixError(f"size '{text}' is not understood", "write it as 2GB, 500MB or a number of bytes") from None


class ShardedWriter:
    """Writes tensors, in a planned order, into sharded safetensors files in ``staging``.

    ``plan`` is the list of (name, shape, dtype) in output order; tensors must then be given to
    :meth:`write` in exactly that order. Use as a context manager; :meth:`finish` writes the
    index (when there is more than one shard).
    """

    def __init__(self, staging: Path, plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]], shard_size: int) -> None:
        self.staging = staging
        shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
        size = 0
        for item in plan:
            nbytes = math.prod(item[1]) * item[2].itemsize
            if shards[-1] and size + nbytes > shard_size:
                shards.append([])
                size = 0
            shards[-1].append(item)
            size += nbytes
        n = len(shards)
        self.names = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shards = shards
        self.total_size = sum(math.prod(s) * d.itemsize for _, s, d in plan)
        self._order = [(i, name, shape, dtype) for i, shard in enumerate(shards) for name, shape, dtype in shard]
        self._pos = 0
        self._fh = None
        self._shard = -1

    def _open_shard(self, i: int) -> None:
        if self._fh is not None:
            self._fh.close()
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in self.shards[i]:
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": TORCH_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes with spaces
        self._fh = open(self.staging / self.names[i], "wb")
        self._fh.write(struct.pack("<Q", len(blob)))
        self._fh.write(blob)
        self._shard = i

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor of the plan."""
        i, want, shape, dtype = self._order[self._pos]
        if name != want or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise RuntimeError(f"writer expected {want} {shape} {dtype}, got {name} {tuple(tensor.shape)} {tensor.dtype}")
        if i != self._shard:
            self._open_shard(i)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(memoryview(data))
        self._pos += 1

    def finish(self) -> None:
        if self._pos != len(self._order):
            raise RuntimeError(f"writer got {self._pos} of {len(self._order)} tensors")
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        if len(self.names) > 1:
            weight_map = {name: self.names[i] for i, name, _, _ in self._order}
            write_json(self.staging / INDEX_NAME, {"metadata": {"total_size": self.total_size}, "weight_map": weight_map})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class StagedDir:
    """A directory that appears at ``target`` only when complete (crash-safe output).

    Everything is written to a hidden sibling; :meth:`commit` swaps it in. An existing target
    is an error unless ``force``.
    """

    def __init__(self, target: str | Path, force: bool = False) -> None:
        self.target = Path(target)
        if self.target.exists() and not (self.target.is_dir() and not any(self.target.iterdir())):
            if not force:
                raise DemixError(f"output directory '{self.target}' already exists", "pass --force to replace it, or choose another --out")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.partial-"))

    def commit(self) -> Path:
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
            os.replace(self.path, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.path, self.target)
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def copy_side_files(src: Path, dst: Path, names: Iterable[str]) -> list[str]:
    """Copy the named files that exist in ``src`` (tokenizer, generation config) into ``dst``."""
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def write_config(base_config: dict[str, Any], dst: Path, dtype: torch.dtype) -> None:
    """The base's config.json with the output dtype (both key spellings transformers uses)."""
    cfg = dict(base_config)
    name = str(dtype).removeprefix("torch.")
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = name
    cfg["dtype"] = name
    atomic_write_text(dst / "config.json", json.dumps(cfg, indent=2) + "\n")
