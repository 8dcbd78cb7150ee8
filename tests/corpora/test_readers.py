"""User-file readers: formats, deterministic order, and one clear error per kind of bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demix.config import DomainConfig
from demix.corpora import open_corpus
from demix.corpora.readers import read_files
from demix.errors import DemixError


def _docs(source, text_field="text"):
    return list(open_corpus(DomainConfig(name="d", source=str(source), text_field=text_field)).documents())


def test_jsonl_reads_field_skips_blank_lines_and_empty_texts(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"body": "first doc"}) + "\n\n" + json.dumps({"body": "  "}) + "\n"
                 + json.dumps({"body": "second\n\ndoc ü"}) + "\n")
    assert _docs(p, "body") == ["first doc", "second\n\ndoc ü"]


def test_txt_splits_on_blank_lines(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("para one\nline two\n\n\n  \npara two\n\nlast")
    assert _docs(p) == ["para one\nline two", "para two", "last"]


def test_parquet_reads_column_and_skips_nulls(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["x y", None, "z"], "id": [1, 2, 3]}), p)
    assert _docs(p, "content") == ["x y", "z"]


def test_directory_is_recursive_sorted_and_ignores_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("from b")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "from a"}) + "\n")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / ".hidden.txt").write_text("ignored too")
    assert _docs(tmp_path) == ["from a", "from b"]
    assert _docs(tmp_path) == _docs(tmp_path)


def test_missing_source_names_path(tmp_path):
    with pytest.raises(DemixError, match="does not exist") as exc:
        _docs(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in exc.value.what and exc.value.fix


def test_unsupported_file_type(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("text\nhello\n")
    with pytest.raises(DemixError, match="unsupported type '.csv'"):
        _docs(p)


def test_directory_without_supported_files(tmp_path):
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(DemixError, match="holds no .jsonl, .txt, .parquet files"):
        _docs(tmp_path)


def test_jsonl_invalid_json_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(DemixError, match=r"bad\.jsonl:2 is not valid JSON"):
        _docs(p)


def test_jsonl_missing_field_names_file_line_and_keys(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DemixError, match=r"bad\.jsonl:2 has no field 'text' \(found: \['content'\]\)") as exc:
        _docs(p)
    assert "text_field" in exc.value.fix


def test_jsonl_non_string_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(DemixError, match=r"bad\.jsonl:1: field 'text' is a int"):
        _docs(p)


def test_parquet_without_column_lists_columns(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"]}), p)
    with pytest.raises(DemixError, match=r"no column 'text' \(columns: \['body'\]\)"):
        _docs(p)


def test_unknown_builtin_lists_known_ones():
    with pytest.raises(DemixError, match="unknown builtin corpus 'builtin:poetry'") as exc:
        open_corpus(DomainConfig(name="d", source="builtin:poetry"))
    for name in ("builtin:general", "builtin:math", "builtin:code", "builtin:math_problems"):
        assert name in exc.value.fix


def test_read_files_is_lazy(tmp_path):
    """A bad line late in a file only fails when reached: readers stream, they do not slurp."""
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\nbroken\n")
    it = read_files(p, "d")
    assert next(it) == "ok"
    with pytest.raises(DemixError):
        next(it)
