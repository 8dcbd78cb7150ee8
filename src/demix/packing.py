"""Packed token files: each domain's split tokenised once, read by training and evaluation.

On disk, for a prefix such as ``data/math/train``:

- ``train.bin``: all documents' token ids back to back, each document followed by the EOS id,
  as a flat little-endian array (uint16 when the vocabulary fits, else uint32). Read with
  ``numpy.memmap``: nothing is loaded until sliced.
- ``train.idx.npy``: int64 offsets of document starts, length ``documents + 1`` (the last entry
  is the total token count), so document ``i`` is ``tokens[idx[i]:idx[i+1]]``.
- ``train.meta.json``: dtype, token / document / UTF-8 byte counts (bits per byte needs bytes).

Files are written under a temporary name and renamed at the end, so a crash never leaves a
truncated file that looks complete. A domain's directory is packed whole in a staging directory
next to it and renamed into place (:func:`replace_pack_dir`); what it replaces must be a pack
demix wrote, told apart by its files (:func:`is_pack_dir`), never by its path.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from demix.errors import DemixError


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class PackedWriter:
    """Streams documents (lists of token ids) into a packed file; call :meth:`close` to commit."""

    def __init__(self, prefix: str | Path, vocab_size: int, eos_id: int) -> None:
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = token_dtype(vocab_size)
        self.eos_id = int(eos_id)
        self._tmp_bin = self.prefix.with_name(self.prefix.name + ".bin.tmp")
        self._fh = open(self._tmp_bin, "wb")
        self._offsets: list[int] = [0]
        self._bytes = 0

    def add(self, token_ids: Iterable[int], num_bytes: int) -> None:
        """Append one document (without EOS; it is added here) of ``num_bytes`` UTF-8 bytes."""
        arr = np.fromiter(token_ids, dtype=np.int64)
        arr = np.append(arr, self.eos_id).astype(self.dtype)
        self._fh.write(arr.tobytes())
        self._offsets.append(self._offsets[-1] + len(arr))
        self._bytes += int(num_bytes)

    def close(self, extra_meta: dict | None = None) -> dict:
        """Flush, rename into place, and write the index and metadata. Returns the metadata."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        offsets = np.asarray(self._offsets, dtype=np.int64)
        meta = {
            "dtype": self.dtype.name,
            "tokens": int(offsets[-1]),
            "documents": len(offsets) - 1,
            "bytes": self._bytes,
            "eos_id": self.eos_id,
            **(extra_meta or {}),
        }
        idx_tmp = self.prefix.with_name(self.prefix.name + ".idx.tmp.npy")
        np.save(idx_tmp, offsets)
        os.replace(self._tmp_bin, self.prefix.with_name(self.prefix.name + ".bin"))
        os.replace(idx_tmp, self.prefix.with_name(self.prefix.name + ".idx.npy"))
        meta_path = self.prefix.with_name(self.prefix.name + ".meta.json")
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        return meta


class PackedTokens:
    """Read-only view of a packed file (memory-mapped)."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        meta_path = self.prefix.with_name(self.prefix.name + ".meta.json")
        bin_path = self.prefix.with_name(self.prefix.name + ".bin")
        idx_path = self.prefix.with_name(self.prefix.name + ".idx.npy")
        for p in (meta_path, bin_path, idx_path):
            if not p.is_file():
                raise DemixError(f"packed token file '{p}' is missing", "run `demix prepare CONFIG` first")
        self.meta: dict = json.loads(meta_path.read_text())
        self.dtype = np.dtype(self.meta["dtype"])
        expected = self.meta["tokens"] * self.dtype.itemsize
        if bin_path.stat().st_size != expected:
            raise DemixError(
                f"packed token file '{bin_path}' has {bin_path.stat().st_size} bytes, expected {expected} (truncated?)",
                "delete the domain's data directory and run `demix prepare` again",
            )
        self.tokens = np.memmap(bin_path, dtype=self.dtype, mode="r") if expected else np.zeros(0, self.dtype)
        self.offsets = np.load(idx_path)

    @staticmethod
    def exists(prefix: str | Path) -> bool:
        prefix = Path(prefix)
        return all(
            prefix.with_name(prefix.name + s).is_file() for s in (".bin", ".idx.npy", ".meta.json")
        )

    @property
    def num_tokens(self) -> int:
        return int(self.meta["tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.meta["documents"])

    @property
    def num_bytes(self) -> int:
        return int(self.meta["bytes"])

    def __len__(self) -> int:
        return self.num_documents

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (ending with EOS)."""
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    def sequences(self, seq_len: int, max_tokens: int | None = None) -> np.ndarray:
        """The stream cut into consecutive windows of ``seq_len + 1`` tokens (inputs and shifted
        targets overlap by one), as an int64 array of shape (n, seq_len + 1). Deterministic:
        the same call always returns the same windows, which is what evaluation needs."""
        n_tok = self.num_tokens if max_tokens is None else min(self.num_tokens, max_tokens + 1)
        n = (n_tok - 1) // seq_len
        if n <= 0:
            return np.zeros((0, seq_len + 1), dtype=np.int64)
        # Windows share their boundary token: window j covers [j*seq_len, (j+1)*seq_len].
        idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
        return np.asarray(self.tokens[: n * seq_len + 1], dtype=np.int64)[idx]


def split_prefix(data_dir: str | Path, domain: str, split: str) -> Path:
    """Prefix of a domain's packed split inside a run's data directory."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    return Path(data_dir) / domain / split


# --------------------------------------------------------------------------- pack directories

PACK_FILES = frozenset(
    f"{split}{ext}" for split in ("train", "heldout") for ext in (".bin", ".idx.npy", ".meta.json", ".bin.tmp", ".idx.tmp.npy")
)
"""Every name :class:`PackedWriter` writes in a domain's directory, its temporary names included."""


def inside(root: str | Path, path: str | Path) -> Path:
    """``path``, refused unless it resolves (symlinks and ``..`` followed) strictly inside ``root``:
    the guard on every directory demix removes or replaces in a run."""
    top, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved == top or not resolved.is_relative_to(top):
        raise DemixError(
            f"'{path}' resolves to '{resolved}', outside '{top}'; demix writes and removes only inside it",
            "check the domain names and any symbolic links in the run directory",
        )
    return Path(path)


def is_pack_dir(path: str | Path) -> bool:
    """True for a real directory holding only files :class:`PackedWriter` writes (or nothing)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    return all(entry.name in PACK_FILES and not entry.is_dir() for entry in path.iterdir())


def check_replaceable(target: str | Path, root: str | Path) -> None:
    """Raise unless ``target`` (inside ``root``) is absent or a pack demix wrote, i.e. safe to replace."""
    target = inside(root, target)
    if not (target.exists() or target.is_symlink()) or is_pack_dir(target):
        return
    if target.is_dir() and not target.is_symlink():
        foreign = sorted(e.name for e in target.iterdir() if e.name not in PACK_FILES or e.is_dir())
        what = f"holds files demix did not write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''})"
    else:
        what = "is not a directory demix wrote"
    raise DemixError(
        f"'{target}' {what}; prepare packs the domain's tokens there and will not remove them",
        f"move them out of '{target.parent}' (a domain's source files belong outside the run's data directory), then run again",
    )


def staging_dir(target: str | Path) -> Path:
    """A new empty directory next to ``target`` to pack into (hidden: domain names never start with a dot)."""
    target = Path(target)
    path = target.with_name(f".{target.name}.packing-{uuid.uuid4().hex[:12]}")
    path.mkdir(parents=True)
    return path


def replace_pack_dir(staging: str | Path, target: str | Path, root: str | Path) -> None:
    """Rename the finished ``staging`` pack into ``target``, replacing only a pack demix wrote.

    A directory rename cannot replace a non-empty one, so the old pack moves aside first; a crash
    between the two renames leaves no ``target`` (prepare redoes it) and a hidden leftover that
    :func:`remove_stale` clears."""
    staging, target = Path(staging), inside(root, target)
    check_replaceable(target, root)
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:12]}")
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old)


def remove_pack_dir(path: str | Path, root: str | Path) -> None:
    """Remove ``path`` if it is a pack demix wrote inside ``root``; anything else is left alone."""
    path = inside(root, path)
    if is_pack_dir(path):
        shutil.rmtree(path)


def remove_stale(data_dir: str | Path) -> None:
    """Clear the hidden staging / replaced packs an interrupted prepare left in ``data_dir``."""
    for path in sorted(Path(data_dir).glob(".*.packing-*")) + sorted(Path(data_dir).glob(".*.replaced-*")):
        remove_pack_dir(path, data_dir)
