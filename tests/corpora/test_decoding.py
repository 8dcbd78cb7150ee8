"""Invalid UTF-8, one rule for every reader: strict names the file, byte offset and line (or row);
`errors: replace` puts U+FFFD and counts each replaced sequence per file."""

from __future__ import annotations

import codecs
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from demix.config import DomainConfig
from demix.corpora import open_corpus
from demix.corpora.decoding import Decoder, decode_replacing
from demix.errors import DemixError

GOOD = "Ünïcödé: café, 日本語 🎉"


def _read(source, errors="strict", text_field="text"):
    """Documents of a source and the decoder that read them (its replacement counts)."""
    corpus = open_corpus(DomainConfig(name="d", source=str(source), text_field=text_field, errors=errors))
    decoder = corpus.decoder()
    return list(corpus.documents(decoder)), decoder


def _counting_replace(data: bytes) -> tuple[str, int]:
    """Python's own errors="replace", counting each call of the handler."""
    calls = []

    def handler(exc):
        calls.append(exc.start)
        return "\ufffd", exc.end

    codecs.register_error("test.count", handler)
    return data.decode("utf-8", "test.count"), len(calls)


@given(st.lists(st.one_of(st.binary(max_size=6), st.text(max_size=4).map(lambda t: t.encode("utf-8"))), max_size=12))
def test_decode_replacing_is_pythons_replace_and_counts_each_sequence(chunks):
    data = b"".join(chunks)
    assert decode_replacing(data) == _counting_replace(data)


def test_txt_strict_names_file_byte_offset_and_line(tmp_path):
    p = tmp_path / "a.txt"
    data = GOOD.encode() + b"\n\nsecond doc\nhas \xff here"
    p.write_bytes(data)
    with pytest.raises(DemixError) as exc:
        _read(p)
    offset = data.index(b"\xff")
    assert f"'{p}' is not valid UTF-8 at byte {offset} (line 4): invalid start byte (0xff)" in exc.value.what
    assert "errors: replace" in exc.value.fix and "domain 'd'" in exc.value.fix and "iconv" in exc.value.fix


def test_jsonl_strict_names_file_byte_offset_and_line(tmp_path):
    p = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": GOOD}, ensure_ascii=False).encode(), b"", b'{"text": "cut \xe2\x82 here"}']
    data = b"\r\n".join(lines) + b"\r\n"
    p.write_bytes(data)
    with pytest.raises(DemixError) as exc:
        _read(p)
    offset = data.index(b"\xe2\x82 ")
    assert f"'{p}' is not valid UTF-8 at byte {offset} (line 3): invalid continuation byte (0xe282)" in exc.value.what


def test_parquet_strict_names_file_row_and_column(tmp_path):
    p = tmp_path / "a.parquet"
    values = pa.array([GOOD.encode(), None, b"bad \xc3( value"], type=pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": values}), p)
    with pytest.raises(DemixError) as exc:
        _read(p)
    assert f"'{p}' is not valid UTF-8 at row 2 (0-based) of column 'text', byte 4 of the value" in exc.value.what


def test_replace_puts_fffd_and_counts_per_file(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one \xff\xfe doc\n\ntwo \xc3 docs")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "latin \xe9t\xe9"}\n{"text": "clean"}\n')
    pq.write_table(pa.table({"text": pa.array([b"p \x80"], type=pa.binary()).view(pa.string())}), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text(GOOD)
    docs, decoder = _read(tmp_path, errors="replace")
    # \xff and \xfe are two invalid sequences; a lone lead byte before a space is one.
    assert docs == ["one \ufffd\ufffd doc", "two \ufffd docs", "latin \ufffdt\ufffd", "clean", "p \ufffd", GOOD]
    assert decoder.replaced == {str(tmp_path / "a.txt"): 3, str(tmp_path / "b.jsonl"): 2, str(tmp_path / "c.parquet"): 1}
    assert decoder.total == 6


def test_strict_is_the_default_and_valid_files_read_unchanged(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"bad \xff")
    with pytest.raises(DemixError, match="not valid UTF-8"):
        list(open_corpus(DomainConfig(name="d", source=str(p))).documents())
    p.write_text(f"{GOOD}\n\n\ufeffwith a BOM inside")
    docs, decoder = _read(p, errors="replace")
    assert docs == [GOOD, "\ufeffwith a BOM inside"] and decoder.replaced == {}


def test_jsonl_lone_surrogate_escape_follows_the_same_rule(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "pair \\ud83c\\udf89 is fine"}\n{"text": "lone \\ud800 is not"}\n')
    with pytest.raises(DemixError) as exc:
        _read(p)
    assert f"'{p}' holds text that is not valid Unicode: a lone surrogate escape (\\ud800) at line 2" in exc.value.what
    docs, decoder = _read(p, errors="replace")
    assert docs == ["pair 🎉 is fine", "lone \ufffd is not"] and decoder.total == 1


def test_parquet_binary_column_is_decoded_and_other_types_are_refused(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": pa.array([GOOD.encode(), b"two"], type=pa.binary()), "n": [1, 2]}), p)
    assert _read(p)[0] == [GOOD, "two"]
    with pytest.raises(DemixError, match=r"column 'n' of parquet file '.*a\.parquet' holds int64, not text") as exc:
        _read(p, text_field="n")
    assert "text_field" in exc.value.fix


def test_a_decoder_counts_only_what_it_read():
    decoder = Decoder("d", "replace")
    assert decoder.total == 0 and decoder.replaced == {}
