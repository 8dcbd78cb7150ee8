"""Bad data input, as a user gives it to `demix prepare`: one clear error naming the file (and
where in it), exit 1, and no file of the user's changed; and the layouts that must keep working."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers.battery import assert_unchanged, cli, snapshot

# What `demix prepare` writes in its run directory (with output_dir "." that is the working directory).
RUN_OUTPUTS = ("config.yaml", "logs", "data", "tokenizer")


def _docs(n: int = 120) -> list[str]:
    return [f"Document {i}: the river runs past the mountain {i % 7 + 1} times, quietly." for i in range(n)]


def _jsonl(path, docs=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs or _docs()))
    return path


def _config(path, output_dir, *domains: dict) -> str:
    raw = {"output_dir": str(output_dir), "data": {"heldout_fraction": 0.2, "domains": list(domains)},
           "tokenizer": {"vocab_size": 300}}
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _general(source, **extra) -> dict:
    return {"name": "general", "source": str(source), **extra}


# --------------------------------------------------------------------------- point 1: sources inside the run's data/


@pytest.mark.parametrize("source", ["data/general", "data/general/docs.jsonl"])
def test_sources_inside_the_runs_data_directory_are_refused_and_kept(tmp_path, monkeypatch, source):
    """The natural layout with `output_dir: .`: before, prepare removed data/general/ (the user's
    files with it) and then said the directory held no files."""
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path / "data" / "general" / "docs.jsonl")
    (tmp_path / "data" / "general" / "README.md").write_text("where these documents came from")
    config = _config(tmp_path / "c.yaml", ".", _general(source))
    before = snapshot(tmp_path)
    result = cli("prepare", config, "-q")
    assert result.code == 1, result.text
    assert f"data source '{source}' of domain 'general' is inside the run's own data directory 'data'" in result.text
    assert "move it outside 'data'" in result.text and "Traceback" not in result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["config.yaml", "logs"])
    assert not (tmp_path / "tokenizer").exists()


def test_the_same_layout_with_sources_beside_data_works_and_a_rerun_keeps_working(tmp_path, monkeypatch):
    """GOOD: `output_dir: .` with the sources in their own folder; prepare again (skipped) and
    with --force (the previous pack replaced, nothing else touched)."""
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path / "sources" / "general.jsonl")
    config = _config(tmp_path / "c.yaml", ".", _general("sources/general.jsonl"))
    before = snapshot(tmp_path)
    first = cli("prepare", config, "-q")
    assert first.code == 0, first.text
    packed = snapshot(tmp_path / "data")
    again = cli("prepare", config)
    assert again.code == 0 and "data already prepared for this config" in again.text
    forced = cli("prepare", config, "-q", "--force")
    assert forced.code == 0, forced.text
    assert sorted(snapshot(tmp_path / "data")) == sorted(packed)  # same files, no leftovers
    assert_unchanged(before, snapshot(tmp_path), outputs=RUN_OUTPUTS)


def test_user_files_put_into_a_packed_domain_directory_are_kept(tmp_path):
    run = tmp_path / "run"
    config = _config(tmp_path / "c.yaml", run, _general(_jsonl(tmp_path / "general.jsonl")))
    assert cli("prepare", config, "-q").code == 0
    (run / "data" / "general" / "my_notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    result = cli("prepare", config, "-q", "--force")
    assert result.code == 1 and "general' holds files demix did not write (my_notes.txt)" in result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["run/config.yaml", "run/logs"])


# --------------------------------------------------------------------------- point 2: nothing outside the run


def test_a_domain_directory_linked_to_a_users_folder_is_refused(tmp_path):
    """Before, prepare wrote the packed files through the link, into the user's folder."""
    run = tmp_path / "run"
    mine = tmp_path / "my_corpus"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    (run / "data").mkdir(parents=True)
    (run / "data" / "general").symlink_to(mine)
    config = _config(tmp_path / "c.yaml", run, _general(_jsonl(tmp_path / "general.jsonl")))
    before = snapshot(tmp_path)
    result = cli("prepare", config, "-q")
    assert result.code == 1 and f"resolves to '{mine}', outside" in result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["run/config.yaml", "run/logs"])
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]


def test_a_users_tokenizer_folder_in_the_run_directory_is_kept(tmp_path, monkeypatch):
    """`output_dir: .` beside a folder of the user's named tokenizer/ (not the config's tokenizer.path)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.json").write_text("{}")
    config = _config(tmp_path / "c.yaml", ".", _general(_jsonl(tmp_path / "sources" / "g.jsonl")))
    before = snapshot(tmp_path)
    result = cli("prepare", config, "-q")
    assert result.code == 1 and "'tokenizer' exists and is not a tokenizer demix saved" in result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["config.yaml", "logs"])


# --------------------------------------------------------------------------- point 10: invalid UTF-8


def _bad_bytes(tmp_path, kind: str):
    docs = _docs()
    if kind == "txt":
        data = "\n\n".join(docs).encode()
    else:
        data = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    data = data.replace(b"Document 7:", b"Document \xe97:")  # a latin-1 e-acute
    path = tmp_path / "sources" / f"general.{kind}"
    path.parent.mkdir()
    path.write_bytes(data)
    line = data[: data.index(b"\xe9")].count(b"\n") + 1
    return path, data.index(b"\xe9"), line


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_invalid_utf8_stops_prepare_naming_file_offset_and_line(tmp_path, kind):
    """Before: the .txt was silently read with U+FFFD (exit 0), the .jsonl gave a raw UnicodeDecodeError."""
    path, offset, line = _bad_bytes(tmp_path, kind)
    config = _config(tmp_path / "c.yaml", tmp_path / "run", _general(path))
    before = snapshot(tmp_path)
    result = cli("prepare", config, "-q")
    assert result.code == 1 and "Traceback" not in result.text
    assert f"'{path}' is not valid UTF-8 at byte {offset} (line {line})" in result.text
    assert "errors: replace" in result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])
    assert not (tmp_path / "run" / "data" / "provenance.json").exists()


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_errors_replace_prepares_and_counts_in_provenance(tmp_path, kind):
    path, _, _ = _bad_bytes(tmp_path, kind)
    config = _config(tmp_path / "c.yaml", tmp_path / "run", _general(path, errors="replace"))
    before = snapshot(tmp_path)
    result = cli("prepare", config, "-q")
    assert result.code == 0, result.text
    general = json.loads((tmp_path / "run" / "data" / "provenance.json").read_text())["domains"]["general"]
    assert general["errors"] == "replace"
    assert general["invalid_utf8_replaced"] == {"total": 1, "files": {str(path): 1}}
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])


def test_an_unknown_errors_value_names_the_key(tmp_path):
    config = _config(tmp_path / "c.yaml", tmp_path / "run", _general(_jsonl(tmp_path / "g.jsonl"), errors="ignore"))
    result = cli("prepare", config, "-q")
    assert result.code == 1 and "errors" in result.text and "'strict' or 'replace'" in result.text


# --------------------------------------------------------------------------- GOOD: reader errors of docs/data.md


def _refused(tmp_path, domain: dict, *expected: str) -> None:
    config = _config(tmp_path / "c.yaml", tmp_path / "run", domain)
    before = snapshot(tmp_path)
    result = cli("prepare", config, "-q")
    assert result.code == 1 and "Traceback" not in result.text, result.text
    for text in expected:
        assert text in result.text, result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])


def test_a_damaged_parquet_file_names_the_file(tmp_path):
    path = tmp_path / "general.parquet"
    pq.write_table(pa.table({"text": _docs()}), path)
    path.write_bytes(path.read_bytes()[:-40])
    _refused(tmp_path, _general(path), f"parquet file '{path}' cannot be read")


def test_a_parquet_column_that_is_not_text_names_the_column(tmp_path):
    path = tmp_path / "general.parquet"
    pq.write_table(pa.table({"text": list(range(50))}), path)
    _refused(tmp_path, _general(path), f"column 'text' of parquet file '{path}' holds int64, not text")


def test_a_jsonl_line_without_the_field_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl")
    with open(path, "a") as fh:
        fh.write(json.dumps({"body": "x"}) + "\n")
    _refused(tmp_path, _general(path), f"{path}:121 has no field 'text' (found: ['body'])", "text_field")


def test_an_unsupported_file_and_an_unknown_builtin_are_named(tmp_path):
    csv = tmp_path / "general.csv"
    csv.write_text("text\nhello\n")
    _refused(tmp_path, _general(csv), f"data file '{csv}' of domain 'general' has an unsupported type '.csv'")
    _refused(tmp_path, _general("builtin:poetry"), "unknown builtin corpus 'builtin:poetry'", "builtin:general")


def test_a_domain_with_only_empty_documents_is_named(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl", ["   ", "\n"])
    _refused(tmp_path, _general(path), "domain 'general' has no documents")
