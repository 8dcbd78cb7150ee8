"""One rule for invalid UTF-8 in every reader of user files (`.txt`, `.jsonl`, `.parquet`).

A domain's ``errors`` setting decides: ``strict`` (the default) stops with a :class:`DemixError`
naming the file, the byte offset and the line (or row) of the first invalid sequence, because
silently mangled text is training data nobody asked for; ``replace`` puts U+FFFD in place of
each invalid byte sequence (exactly as Python's ``errors="replace"`` does) and counts them per
file, for provenance.json.

In `.jsonl` a JSON escape of a lone surrogate (``"\\ud800"``) decodes to a string that is not
valid Unicode either (it cannot be encoded back to UTF-8); it follows the same rule.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from demix.errors import DemixError

Errors = Literal["strict", "replace"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_replacing(data: bytes | memoryview) -> tuple[str, int]:
    """``data`` decoded as UTF-8, each invalid byte sequence replaced by U+FFFD, and how many were replaced."""
    view = memoryview(data)
    parts: list[str] = []
    count = pos = 0
    while True:
        try:
            parts.append(codecs.utf_8_decode(view[pos:], "strict", True)[0])
            return "".join(parts), count
        except UnicodeDecodeError as exc:
            # exc.start / exc.end are relative to the slice: the valid text before, then one U+FFFD.
            parts.append(codecs.utf_8_decode(view[pos : pos + exc.start], "strict", True)[0])
            parts.append("\ufffd")
            count += 1
            pos += exc.end


@dataclass
class Decoder:
    """Decodes one domain's files under its ``errors`` rule and counts what ``replace`` replaced."""

    domain: str
    errors: Errors = "strict"
    replaced: dict[str, int] = field(default_factory=dict)
    """Invalid sequences replaced, per file (files without any are left out)."""

    def decode(self, data: bytes, path: Path, where: Callable[[int], str]) -> str:
        """``data`` as text; ``where(offset)`` says where in the file a bad byte sits (for the error)."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if self.errors == "strict":
                bad = data[exc.start : exc.end].hex()
                raise DemixError(f"'{path}' is not valid UTF-8 at {where(exc.start)}: {exc.reason} (0x{bad})", self._fix) from None
        text, count = decode_replacing(data)
        self._count(path, count)
        return text

    def check_text(self, text: str, path: Path, line: int) -> str:
        """``text`` (parsed from JSON on ``line``) with its lone surrogates refused or replaced by U+FFFD."""
        bad = None if text.isascii() else _LONE_SURROGATE.search(text)  # isascii is O(1): most texts skip the scan
        if bad is None:
            return text
        if self.errors == "strict":
            raise DemixError(
                f"'{path}' holds text that is not valid Unicode: a lone surrogate escape (\\u{ord(bad.group()):04x}) at line {line}",
                self._fix,
            )
        text, count = _LONE_SURROGATE.subn("\ufffd", text)
        self._count(path, count)
        return text

    @property
    def total(self) -> int:
        return sum(self.replaced.values())

    @property
    def _fix(self) -> str:
        return (
            "re-encode the text as UTF-8 (a .txt or .jsonl file: `iconv -f latin1 -t utf-8 IN > OUT`), or set `errors: replace` "
            f"on domain '{self.domain}' to replace each invalid sequence by U+FFFD (counted in provenance.json)"
        )

    def _count(self, path: Path, count: int) -> None:
        if count:
            self.replaced[str(path)] = self.replaced.get(str(path), 0) + count


def line_of(data: bytes, offset: int) -> int:
    """1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1
