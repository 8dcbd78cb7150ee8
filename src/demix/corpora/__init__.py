"""Domain corpora: where each domain's documents come from, and the train / held-out split.

A domain's ``source`` is ``builtin:<name>`` (see :mod:`demix.corpora.builtin`) or a path to
user files (see :mod:`demix.corpora.readers`). :func:`open_corpus` turns a
:class:`~demix.config.DomainConfig` into a :class:`Corpus` that yields documents in a fixed
order, knows its licence and has a fingerprint (what would change its documents).

The split is document-level and stable: a document is held out when a keyed hash of its text
(keyed by the data seed) falls below ``heldout_fraction``. The decision depends on the text
alone, so it survives reordering, appending files, or changing caps; exact duplicates are
dropped first, so held-out text can never also appear in training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from demix.config import DomainConfig
from demix.corpora.builtin import BUILTINS, BYTES_PER_TOKEN_BOUND, BuiltinCorpus, get_builtin
from demix.corpora.decoding import Decoder
from demix.corpora.readers import SUPPORTED_SUFFIXES, read_files, source_fingerprint
from demix.errors import DemixError

__all__ = [
    "BUILTINS",
    "SUPPORTED_SUFFIXES",
    "BuiltinCorpus",
    "Corpus",
    "Decoder",
    "SplitStats",
    "builtin_names",
    "heldout_score",
    "open_corpus",
    "split_documents",
]

UNKNOWN_LICENSE = "unknown (set data.domains[].license)"


def builtin_names() -> list[str]:
    """Names accepted after `builtin:`."""
    return sorted(BUILTINS)


@dataclass
class Corpus:
    """The documents of one domain plus what the provenance file records about them."""

    domain: DomainConfig
    builtin: BuiltinCorpus | None

    @property
    def license(self) -> str:
        if self.domain.license:
            return self.domain.license
        return self.builtin.license if self.builtin else UNKNOWN_LICENSE

    @property
    def description(self) -> str:
        return self.builtin.description if self.builtin else f"user files at {self.domain.source}"

    @property
    def max_bytes(self) -> int | None:
        """Read cap of a builtin (None for user files: they are read until max_tokens is met)."""
        if self.builtin is None:
            return None
        cap = self.builtin.default_bytes
        if self.domain.max_tokens:
            cap = max(cap, self.domain.max_tokens * BYTES_PER_TOKEN_BOUND)
        return cap

    def decoder(self) -> Decoder:
        """A fresh decoder of the domain's files under its ``errors`` rule (it counts replacements)."""
        return Decoder(self.domain.name, self.domain.errors)

    def documents(self, decoder: Decoder | None = None) -> Iterator[str]:
        """Every document, in deterministic order; user files go through ``decoder`` (a fresh
        :meth:`decoder` when None)."""
        if self.builtin is not None:
            yield from self.builtin.documents(self.max_bytes)
        else:
            yield from read_files(self.domain.source, self.domain.name, self.domain.text_field, decoder or self.decoder())

    def fingerprint(self) -> dict[str, Any]:
        """What determines the documents: builtin name, cap and package versions, or file stats."""
        if self.builtin is not None:
            return {"builtin": self.builtin.name, "max_bytes": self.max_bytes, "versions": self.builtin.versions()}
        return {"files": source_fingerprint(self.domain.source, self.domain.name), "text_field": self.domain.text_field}

    def provenance(self, decoder: Decoder | None = None) -> dict[str, Any]:
        """Source, licence and description for provenance.json; for user files also the
        ``errors`` rule and, from the ``decoder`` that read them, the invalid sequences replaced."""
        out: dict[str, Any] = {"source": self.domain.source, "license": self.license, "description": self.description}
        if self.builtin is not None:
            out["origin"] = self.builtin.provenance
            out["versions"] = self.builtin.versions()
        else:
            out["errors"] = self.domain.errors
            if decoder is not None:
                out["invalid_utf8_replaced"] = {"total": decoder.total, "files": dict(decoder.replaced)}
        return out


def open_corpus(domain: DomainConfig) -> Corpus:
    """The corpus of a domain config; unknown builtins and missing paths fail here, early."""
    source = domain.source.strip()
    if source.startswith("builtin:"):
        return Corpus(domain, get_builtin(source.removeprefix("builtin:"), domain.name))
    source_fingerprint(source, domain.name)  # raises a DemixError for a missing/unsupported path
    return Corpus(domain, None)


# --------------------------------------------------------------------------- split


def heldout_score(text: str, seed: int) -> float:
    """A uniform number in [0, 1) from the document text keyed by the seed: the split's coin."""
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()[:64]).digest()
    return int.from_bytes(h, "little") / 2**64


@dataclass
class SplitStats:
    """Counts of one domain's split (filled while :func:`split_documents` runs)."""

    documents_read: int = 0
    duplicates: int = 0
    heldout_over_cap: int = 0


def split_documents(
    documents: Iterator[str],
    seed: int,
    heldout_fraction: float,
    max_heldout_documents: int | None = None,
    stats: SplitStats | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield ``(split, text)`` with split ``train`` or ``heldout``, dropping exact duplicates.

    Held-out documents beyond ``max_heldout_documents`` are dropped, not moved to training, so
    which documents are held out never depends on the cap.
    """
    stats = stats if stats is not None else SplitStats()
    seen: set[bytes] = set()
    n_heldout = 0
    for text in documents:
        stats.documents_read += 1
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in seen:
            stats.duplicates += 1
            continue
        seen.add(digest)
        if heldout_score(text, seed) < heldout_fraction:
            if max_heldout_documents is not None and n_heldout >= max_heldout_documents:
                stats.heldout_over_cap += 1
                continue
            n_heldout += 1
            yield "heldout", text
        else:
            yield "train", text


def check_nonempty(domain: str, source: str, n_documents: int) -> None:
    """Raise the empty-domain error when a source gave no document with text."""
    if n_documents == 0:
        raise DemixError(
            f"domain '{domain}' has no documents: source '{source}' holds no non-empty text",
            "check the files (and data.domains[].text_field), or remove the domain",
        )
