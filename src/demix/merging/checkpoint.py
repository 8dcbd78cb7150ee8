"""Reading and writing HF checkpoint directories as safetensors, one tensor at a time.

Reading: :class:`Checkpoint` is a :class:`demix.checkpoints.Layout` (the directory indexed from
its safetensors headers alone: ``model.safetensors`` or the shards named by
``model.safetensors.index.json``) plus torch dtypes and the files memory-mapped through
``safetensors.safe_open``; nothing is unpickled, ever. Every problem (no safetensors, a missing
or truncated shard, a corrupt header) is a :class:`~demix.errors.DemixError` naming the file.

Writing: :class:`ShardedWriter` writes a sharded safetensors checkpoint *streaming*: the shard
plan and every header are known up front (names, shapes and dtypes come from the inputs'
headers), so each tensor's bytes are appended as soon as it is merged and never held with the
others. The safetensors library only writes whole dicts of tensors, which would hold a shard in
memory; the format itself is a little-endian u64 header length, a JSON header and the raw bytes
(https://github.com/huggingface/safetensors#format), so the writer here is a few lines. Files
are written into a staging directory that replaces the output only when complete, and only an
output that is none of the merge's inputs and, when it exists, a merged checkpoint demix wrote.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open

from demix.checkpoints import INDEX_FILE, PROVENANCE_FILE, SINGLE_FILE, Layout, is_finished, read_provenance
from demix.errors import DemixError
from demix.rundir import atomic_write_text, write_json

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
    """An HF checkpoint directory indexed from its safetensors headers (no tensor is read),
    with the files open (memory-mapped) for reading tensors one at a time.

    ``tensors`` keeps the order of the files (and of names inside each file) so merged outputs
    list tensors in the base's order. ``layout`` is the torch-free description
    (:class:`demix.checkpoints.Layout`) that compatibility checks compare.
    """

    layout: Layout
    tensors: dict[str, TensorInfo]
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path, role: str = "checkpoint") -> Checkpoint:
        """Index ``path``; ``role`` (base, component 'math', ...) names it in errors."""
        layout = Layout.read(path, role)
        tensors: dict[str, TensorInfo] = {}
        for name, t in layout.tensors.items():
            if t.dtype not in ST_TO_TORCH:
                raise DemixError(f"{role} tensor '{name}' in '{t.file}' has unsupported dtype {t.dtype}")
            tensors[name] = TensorInfo(name, t.file, t.shape, ST_TO_TORCH[t.dtype])
        handles = {}
        for file in dict.fromkeys(t.file for t in layout.tensors.values()):
            try:
                handles[file] = safe_open(str(file), framework="pt", device="cpu")
            except (SafetensorError, OSError) as exc:  # changed since its header was read
                raise DemixError(
                    f"{role} file '{file}' is not a readable safetensors file ({exc})",
                    "the file is truncated or corrupt: copy or save the checkpoint again",
                ) from None
        return cls(layout, tensors, handles)

    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def config(self) -> dict[str, Any]:
        """The checkpoint's ``config.json``."""
        return self.layout.config

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


# --------------------------------------------------------------------------- writing


def parse_size(text: str | int) -> int:
    """``"2GB"``, ``"500MB"``, ``"1.5GiB"`` or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().replace(" ", "")
    units = {
        "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30,
        "KB": 10**3, "MB": 10**6, "GB": 10**9,
        "K": 10**3, "M": 10**6, "G": 10**9,
        "B": 1,
    }
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
        self.names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shards = shards
        self.total_size = sum(math.prod(s) * d.itemsize for _, s, d in plan)
        self._order = [(i, name, shape, dtype) for i, shard in enumerate(shards) for name, shape, dtype in shard]
        self._pos = 0
        self._fh: BinaryIO | None = None
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
        assert self._fh is not None  # shard i is open
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(data.data)  # the array's buffer, as a memoryview
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
            write_json(self.staging / INDEX_FILE, {"metadata": {"total_size": self.total_size}, "weight_map": weight_map})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def check_output_dir(target: str | Path, inputs: Mapping[str, str | Path], force: bool = False) -> None:
    """Refuse an output directory a merge must not write: one that is, contains or lies inside
    one of its ``inputs`` (``{what: path}``: the base, each component, the tokenizer, the run
    directory); an existing one that is not empty, unless ``force``; and, even with ``force``,
    anything but a merged checkpoint demix wrote (a user's directory, a trained model)."""
    target = Path(target)
    out = target.resolve()
    resolved = {what: Path(path).resolve() for what, path in inputs.items()}
    # An input the output *is* names the problem best (`--out RUN` is the run directory, though it contains the base too).
    clash = [(w, "is") for w, p in resolved.items() if p == out] + [
        (w, "contains" if p.is_relative_to(out) else "is inside")
        for w, p in resolved.items()
        if p != out and (p.is_relative_to(out) or out.is_relative_to(p))
    ]
    if clash:
        what, relation = clash[0]
        raise DemixError(
            f"output directory '{target}' {relation} {what} ('{inputs[what]}'), which this merge reads",
            "choose an --out outside the merge's inputs and the run directory",
        )
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise DemixError(
            f"output '{target}' exists and is not a directory", "choose another --out: demix replaces only a merged checkpoint it wrote"
        )
    if not any(target.iterdir()):
        return
    why = _not_a_merge_output(target)
    if why:
        raise DemixError(
            f"output directory '{target}' is not a merged checkpoint written by demix ({why}): --force replaces only those",
            "choose another --out; if nothing in that directory is needed, remove it yourself",
        )
    if not force:
        raise DemixError(
            f"output directory '{target}' already exists (a merged checkpoint)", "pass --force to replace it, or choose another --out"
        )


def _not_a_merge_output(path: Path) -> str | None:
    """Why ``path`` is not a merged checkpoint demix wrote (None when it is one)."""
    if not is_finished(path):
        return f"it has no {PROVENANCE_FILE}"
    try:
        role = read_provenance(path).role
    except DemixError:
        return f"its {PROVENANCE_FILE} is not a demix provenance record"
    return None if role == "merged" else f"its {PROVENANCE_FILE} has role '{role}'"


def output_error(exc: OSError, target: Path, nbytes: int | None = None) -> DemixError:
    """An OS error while writing the merged checkpoint ``target`` (disk full, read-only file
    system, no permission) as the one error that names the place and the fix."""
    if exc.errno == errno.ENOSPC:
        need = f" (it needs about {nbytes / 1e6:.1f} MB)" if nbytes else ""
        return DemixError(
            f"no space left on the file system of '{target.parent}' while writing the merged checkpoint '{target}'{need}; "
            f"nothing was left at '{target}' and what was there before is unchanged",
            "free space there, or choose an --out on a disk with room",
        )
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DemixError(f"cannot write the merged checkpoint '{target}': {exc.strerror}{where}", "choose an --out you can write to")
    return DemixError(
        f"writing the merged checkpoint '{target}' failed: {exc.strerror or exc}{where}", "check the --out path and its disk; run again"
    )


class StagedDir:
    """A directory that appears at ``target`` only when complete (crash-safe output).

    Everything is written to a hidden sibling; :meth:`commit` swaps it in. The target is
    checked first (:func:`check_output_dir`): never one of ``inputs``, and an existing one is
    replaced only with ``force`` and only when it is a merged checkpoint demix wrote.
    """

    def __init__(self, target: str | Path, force: bool = False, inputs: Mapping[str, str | Path] | None = None) -> None:
        self.target = Path(target)
        check_output_dir(self.target, inputs or {}, force)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.partial-"))
        except OSError as exc:
            raise output_error(exc, self.target) from None

    def commit(self) -> Path:
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
            try:
                os.replace(self.path, self.target)
            except BaseException:
                os.replace(old, self.target)  # the previous output goes back in place
                raise
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
