"""Readers of user-provided domain files: `.jsonl`, `.txt`, `.parquet`, or a directory of them.

Every reader yields documents (non-empty strings) in a deterministic order, so the same files
always give the same documents and therefore the same train / held-out split.

- ``.jsonl``: one JSON object per line; the document is the value of the domain's ``text_field``.
  Blank lines are skipped; a line that is not JSON, not an object, or lacks the field is an
  error naming the file and line.
- ``.txt``: documents are separated by one or more blank lines (a file without blank lines is one
  document). Why: the common case is one big text file, which must still yield many documents
  for a document-level split. Documents that contain blank lines themselves (multi-paragraph
  articles, code) belong in `.jsonl` or `.parquet`, one record per document.
- ``.parquet``: the ``text_field`` column (string or binary), read in record batches (pyarrow);
  nulls are skipped.
- a directory: every supported file below it, recursively, in sorted path order; other files are
  ignored (listed in the log).

Every reader decodes bytes itself, through the domain's :class:`~demix.corpora.decoding.Decoder`:
invalid UTF-8 is one rule for all formats (an error naming the file and byte offset, or
``errors: replace`` with a count), never a format-dependent surprise.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from demix.corpora.decoding import Decoder, line_of
from demix.errors import DemixError

log = logging.getLogger("demix.corpora")

SUPPORTED_SUFFIXES = (".jsonl", ".txt", ".parquet")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def list_files(source: str | Path, domain: str) -> list[Path]:
    """The files a source path stands for (a file, or the supported files under a directory)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DemixError(
            f"data source '{source}' of domain '{domain}' does not exist",
            "fix data.domains[].source: a .jsonl/.txt/.parquet file, a directory of them, or builtin:<name>",
        )
    if path.is_file():
        if _suffix(path) not in SUPPORTED_SUFFIXES:
            raise DemixError(
                f"data file '{path}' of domain '{domain}' has an unsupported type '{path.suffix or '(none)'}'",
                f"convert it to one of {', '.join(SUPPORTED_SUFFIXES)}",
            )
        return [path]
    files: list[Path] = []
    for p in sorted(path.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(path).parts):
            continue
        if _suffix(p) in SUPPORTED_SUFFIXES:
            files.append(p)
        else:
            log.info("domain %s: ignoring %s (not %s)", domain, p, "/".join(SUPPORTED_SUFFIXES))
    if not files:
        raise DemixError(
            f"data directory '{path}' of domain '{domain}' holds no {', '.join(SUPPORTED_SUFFIXES)} files",
            "put the domain's documents there in one of those formats, or point source at the right directory",
        )
    return files


def _at_line(line_start: int, lineno: int, offset: int) -> str:
    return f"byte {line_start + offset} (line {lineno})"


def read_jsonl(path: Path, text_field: str, decoder: Decoder) -> Iterator[str]:
    """Documents of a JSON-lines file (one object per line, text in ``text_field``)."""
    with open(path, "rb") as fh:  # bytes: the decoder knows each bad byte's offset in the file
        line_start = 0
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:  # decoded again to name the offset or replace; clean lines stay on the fast path
                line = decoder.decode(raw, path, partial(_at_line, line_start, lineno))
            line_start += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DemixError(
                    f"{path}:{lineno} is not valid JSON ({exc.msg})",
                    "each line of a .jsonl file must be one JSON object, e.g. {\"text\": \"...\"}",
                ) from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DemixError(
                    f"{path}:{lineno} has no field '{text_field}' (found: {keys})",
                    "set data.domains[].text_field to the field holding the text",
                )
            text = record[text_field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise DemixError(
                    f"{path}:{lineno}: field '{text_field}' is a {type(text).__name__}, not a string",
                    "set data.domains[].text_field to the field holding the text",
                )
            text = decoder.check_text(text, path, lineno)
            if text.strip():
                yield text


def read_txt(path: Path, decoder: Decoder) -> Iterator[str]:
    """Documents of a text file: blocks separated by blank lines."""
    data = path.read_bytes()
    text = decoder.decode(data, path, lambda offset: f"byte {offset} (line {line_of(data, offset)})")
    for block in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        block = block.strip("\n")
        if block.strip():
            yield block


def _type_is(arrow_type: Any, kinds: tuple[str, ...]) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return any(getattr(pa.types, kind, lambda _: False)(arrow_type) for kind in kinds)


def _is_binary(arrow_type: Any) -> bool:
    return _type_is(arrow_type, ("is_binary", "is_large_binary", "is_binary_view"))


def _is_text(arrow_type: Any) -> bool:
    """Whether a parquet column holds text (strings, or bytes that should be UTF-8)."""
    return _is_binary(arrow_type) or _type_is(arrow_type, ("is_string", "is_large_string", "is_string_view"))


def _at_row(column: str, row: int, offset: int) -> str:
    return f"row {row} (0-based) of column '{column}', byte {offset} of the value"


def read_parquet(path: Path, text_field: str, decoder: Decoder) -> Iterator[str]:
    """Documents of a parquet file's ``text_field`` column, read batch by batch."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DemixError(f"parquet file '{path}' cannot be read ({exc})", "check that the file is a complete parquet file") from None
    columns = pf.schema_arrow.names
    if text_field not in columns:
        raise DemixError(
            f"parquet file '{path}' has no column '{text_field}' (columns: {columns})",
            "set data.domains[].text_field to the column holding the text",
        )
    arrow_type = pf.schema_arrow.field(text_field).type
    if not _is_text(arrow_type):
        raise DemixError(
            f"column '{text_field}' of parquet file '{path}' holds {arrow_type}, not text",
            "set data.domains[].text_field to the column holding the text (a string column)",
        )
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for text in _batch_texts(batch.column(0), path, text_field, row, decoder):
            if text is not None and text.strip():
                yield text
        row += batch.num_rows


def _batch_texts(column: Any, path: Path, text_field: str, first_row: int, decoder: Decoder) -> list[str | None]:
    """The texts of one record batch's column (None for nulls), decoded by ``decoder``."""
    import pyarrow as pa

    if not _is_binary(column.type):
        try:
            return column.to_pylist()  # fast path: pyarrow decodes valid UTF-8 itself
        except UnicodeDecodeError:  # a bare error without the file: decode again, value by value
            pass
    values = column.cast(pa.large_binary()).to_pylist()
    return [None if v is None else decoder.decode(v, path, partial(_at_row, text_field, first_row + i)) for i, v in enumerate(values)]


def read_files(source: str | Path, domain: str, text_field: str = "text", decoder: Decoder | None = None) -> Iterator[str]:
    """Every document of a user source (file or directory), in deterministic order; invalid
    UTF-8 is handled by ``decoder`` (strict when None)."""
    decoder = decoder or Decoder(domain)
    for path in list_files(source, domain):
        suffix = _suffix(path)
        if suffix == ".jsonl":
            yield from read_jsonl(path, text_field, decoder)
        elif suffix == ".txt":
            yield from read_txt(path, decoder)
        else:
            yield from read_parquet(path, text_field, decoder)


def source_fingerprint(source: str | Path, domain: str) -> list[list]:
    """(path, size, mtime) of every file of a source: a changed file changes the fingerprint."""
    out = []
    for p in list_files(source, domain):
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out
