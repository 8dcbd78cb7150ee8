"""The prepare stage on small user files: packed counts, round trips, split hygiene, idempotency,
provenance, caps, the CLI, and its errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demix.cli import main
from demix.config import config_from_dict
from demix.errors import DemixError
from demix.packing import PackedTokens, split_prefix
from demix.prepare import domain_token_counts, is_prepared, prepare
from demix.rundir import RunDir, read_json
from demix.tokenizer import load_tokenizer


def _general_docs(n=120):
    return [f"Story {i}: the traveller walked {i % 9 + 1} miles to the café by the river, où il pleut. " * (1 + i % 3)
            for i in range(n)]


def _math_docs(n=120):
    return [f"Problem {i}. Solve {i % 11 + 2}*x + {i} = {(i % 11 + 2) * 3 + i}.\nAnswer: x = 3" for i in range(n)]


def _code_docs(n=80):
    return [f"def f_{i}(x):\n    return x * {i}\n\n\n# comment ✓ {i}\nclass C{i}:\n    pass" for i in range(n)]


@pytest.fixture
def sources(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "general.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(_general_docs())))
    (src / "math.txt").write_text("\n\n".join(_math_docs()))
    pq.write_table(pa.table({"content": _code_docs()}), src / "code.parquet")
    return src


def _config(tmp_path, sources, **data):
    raw = {
        "output_dir": str(tmp_path / "run"),
        "data": {
            "domains": [
                {"name": "general", "source": str(sources / "general.jsonl"), "license": "CC0-1.0"},
                {"name": "math", "source": str(sources / "math.txt")},
                {"name": "code", "source": str(sources / "code.parquet"), "text_field": "content"},
            ],
            "heldout_fraction": 0.2,
            **data,
        },
        "tokenizer": {"vocab_size": 300},
    }
    return config_from_dict(raw)


def _decoded(tok, packed):
    eos = tok.eos_token_id
    out = []
    for i in range(len(packed)):
        ids = packed.document(i)
        assert ids[-1] == eos and eos not in ids[:-1]
        out.append(tok.decode(ids[:-1].tolist()))
    return out


def test_prepare_packs_every_document_exactly(tmp_path, sources):
    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    result = prepare(cfg, run, progress=False)
    tok = load_tokenizer(run.tokenizer)
    assert len(tok) == 300 and result["tokenizer"]["vocab_size"] == 300
    originals = {"general": _general_docs(), "math": _math_docs(), "code": _code_docs()}
    for domain, docs in originals.items():
        splits = {s: PackedTokens(split_prefix(run.data, domain, s)) for s in ("train", "heldout")}
        decoded = {s: _decoded(tok, p) for s, p in splits.items()}
        # Round trip: every packed document decodes to an original one, in source order, and
        # together the splits hold each original document exactly once.
        assert sorted(decoded["train"] + decoded["heldout"]) == sorted(docs)
        for s in ("train", "heldout"):
            assert decoded[s] == [d for d in docs if d in set(decoded[s])]
            meta = splits[s].meta
            texts = decoded[s]
            assert meta["documents"] == len(texts) > 0
            assert meta["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
            assert meta["tokens"] == sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
            assert meta["tokens"] == splits[s].offsets[-1] == len(splits[s].tokens)
            prov = result["domains"][domain]["splits"][s]
            assert prov == {k: meta[k] for k in ("documents", "bytes", "tokens")}
        # Held-out text never enters training.
        assert not set(decoded["train"]) & set(decoded["heldout"])
        assert 0.05 < len(decoded["heldout"]) / len(docs) < 0.4

    prov = read_json(run.provenance)
    assert prov["domains"]["general"]["license"] == "CC0-1.0"
    assert prov["domains"]["math"]["license"].startswith("unknown")
    assert prov["fingerprint"] == result["fingerprint"]
    counts = domain_token_counts(run)
    assert list(counts) == ["general", "math", "code"]
    assert counts["math"] == PackedTokens(split_prefix(run.data, "math", "train")).num_tokens


def test_tokenizer_never_sees_heldout_text(tmp_path):
    """A word that only occurs in held-out documents must not become a merged token."""
    src = tmp_path / "src"
    src.mkdir()
    docs = [f"common words appear in every document number {i}" for i in range(200)]
    cfg_raw = {"output_dir": str(tmp_path / "run"), "data": {"heldout_fraction": 0.3, "domains": [
        {"name": "general", "source": str(src / "g.jsonl")}]}, "tokenizer": {"vocab_size": 400}}
    from demix.corpora import heldout_score

    # The marker goes only into documents that the split holds out (decided on the final text).
    marked = [d + " zyxwvutsrq" * 20 for d in docs]
    marked = [m if heldout_score(m, 0) < 0.3 else d for d, m in zip(docs, marked)]
    assert sum("zyx" in t for t in marked) > 20
    (src / "g.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in marked))
    cfg = config_from_dict(cfg_raw)
    run = RunDir(cfg.run_dir)
    prepare(cfg, run, progress=False)
    tok = load_tokenizer(run.tokenizer)
    vocab = tok.get_vocab()
    assert not any("zyx" in t for t in vocab), "held-out-only text reached the tokenizer"
    assert len(tok(" zyxwvutsrq", add_special_tokens=False)["input_ids"]) >= 5


def test_prepare_is_idempotent_and_redoes_on_change(tmp_path, sources):
    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    first = prepare(cfg, run, progress=False)
    assert first["skipped"] is False and is_prepared(cfg, run)
    bin_path = split_prefix(run.data, "math", "train").with_suffix(".bin")
    mtime = bin_path.stat().st_mtime_ns
    again = prepare(cfg, run, progress=False)
    assert again["skipped"] is True and bin_path.stat().st_mtime_ns == mtime

    # A changed data config redoes the stage.
    cfg2 = _config(tmp_path, sources, heldout_fraction=0.3)
    assert not is_prepared(cfg2, run)
    redo = prepare(cfg2, run, progress=False)
    assert redo["skipped"] is False and redo["fingerprint"] != first["fingerprint"]

    # So does an edited source file (size / mtime are part of the fingerprint).
    with open(sources / "math.txt", "a") as fh:
        fh.write("\n\nProblem extra. What is 2 + 2?\nAnswer: 4")
    os.utime(sources / "math.txt", ns=(mtime + 10**9, mtime + 10**9))
    assert not is_prepared(cfg2, run)

    # A missing packed file (a crash, a manual delete) is not "prepared" either.
    prepare(cfg2, run, progress=False)
    split_prefix(run.data, "code", "heldout").with_suffix(".idx.npy").unlink()
    assert not is_prepared(cfg2, run)


def test_max_tokens_and_max_heldout_documents_cap(tmp_path, sources):
    cfg = _config(tmp_path, sources, max_heldout_documents=3)
    cfg.data.domains[0].max_tokens = 500
    run = RunDir(cfg.run_dir)
    result = prepare(cfg, run, progress=False)
    g = result["domains"]["general"]
    assert g["capped_at_max_tokens"] is True
    # Capped at a document boundary: the last document crosses the cap.
    train = PackedTokens(split_prefix(run.data, "general", "train"))
    assert 500 <= train.num_tokens < 500 + max(np.diff(train.offsets))
    for d in ("general", "math", "code"):
        assert result["domains"][d]["splits"]["heldout"]["documents"] <= 3


def test_user_tokenizer_is_used_and_copied(tmp_path, sources):
    from demix.tokenizer import train_bpe

    train_bpe(iter(_general_docs() * 3), vocab_size=280, save_dir=tmp_path / "mytok")
    cfg = _config(tmp_path, sources)
    cfg.tokenizer.path = str(tmp_path / "mytok")
    run = RunDir(cfg.run_dir)
    result = prepare(cfg, run, progress=False)
    assert result["tokenizer"]["vocab_size"] == 280
    assert len(load_tokenizer(run.tokenizer)) == 280


def test_empty_domain_is_an_error(tmp_path, sources):
    (sources / "empty.jsonl").write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": "   "}) + "\n")
    cfg = _config(tmp_path, sources)
    cfg.data.domains[1].source = str(sources / "empty.jsonl")
    with pytest.raises(DemixError, match="domain 'math' has no documents"):
        prepare(cfg, RunDir(cfg.run_dir), progress=False)
    assert not RunDir(cfg.run_dir).provenance.exists()


def test_domain_without_heldout_documents_is_an_error(tmp_path, sources):
    (sources / "tiny.txt").write_text("only one document")
    cfg = _config(tmp_path, sources)
    cfg.data.domains[1].source = str(sources / "tiny.txt")
    with pytest.raises(DemixError, match="domain 'math' has no (heldout|train) documents") as exc:
        prepare(cfg, RunDir(cfg.run_dir), progress=False)
    assert "heldout_fraction" in exc.value.fix


def test_domain_token_counts_before_prepare(tmp_path):
    with pytest.raises(DemixError, match="no prepared data"):
        domain_token_counts(RunDir(tmp_path / "run"))


def test_cli_prepare_prints_summary_and_skips_second_time(tmp_path, sources, capsys):
    cfg = _config(tmp_path, sources)
    path = tmp_path / "cfg.yaml"
    from demix.config import dump_config

    path.write_text(dump_config(cfg))
    main(["prepare", str(path), "-q", "-s", "data.seed=3"])
    out = capsys.readouterr().out
    assert "general" in out and "CC0-1.0" in out and "held-out tokens" in out
    run = RunDir(cfg.run_dir)
    assert read_json(run.provenance)["seed"] == 3
    main(["prepare", str(path), "-s", "data.seed=3"])
    assert "already prepared" in capsys.readouterr().out


def test_cli_prepare_bad_source_exits_nonzero(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\ndata:\n  domains:\n    - {{name: general, source: {tmp_path / 'missing.jsonl'}}}\n")
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(path)])
    assert exc.value.code == 1
    assert "missing.jsonl" in capsys.readouterr().err


# --------------------------------------------------------------------------- never remove what demix did not write


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_second_prepare_replaces_its_own_pack_and_leaves_nothing_behind(tmp_path, sources):
    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    prepare(cfg, run, progress=False)
    first = _listing(run.data)
    again = prepare(cfg, run, progress=False, force=True)
    assert again["skipped"] is False and is_prepared(cfg, run)
    assert _listing(run.data) == first  # no staging or replaced directories left over
    assert not any(p.name.startswith(".") for p in run.data.iterdir())


def test_files_a_user_put_in_a_domain_data_directory_are_refused_and_kept(tmp_path, sources):
    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    prepare(cfg, run, progress=False)
    notes = run.domain_data("math") / "notes.md"
    notes.write_text("mine")
    with pytest.raises(DemixError, match=r"math' holds files demix did not write \(notes\.md\)") as exc:
        prepare(cfg, run, progress=False, force=True)
    assert "move them out" in exc.value.fix
    assert notes.read_text() == "mine" and PackedTokens.exists(split_prefix(run.data, "math", "train"))


def test_a_failed_pack_keeps_the_previous_pack_and_no_staging(tmp_path, sources):
    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    prepare(cfg, run, progress=False)
    before = (split_prefix(run.data, "math", "train").with_suffix(".bin")).read_bytes()
    (sources / "math.txt").write_bytes(b"a broken \xff byte")
    with pytest.raises(DemixError, match="not valid UTF-8"):
        prepare(cfg, run, progress=False)
    assert (split_prefix(run.data, "math", "train").with_suffix(".bin")).read_bytes() == before
    assert not any(p.name.startswith(".") for p in run.data.iterdir())
    assert not is_prepared(cfg, run)


def test_stale_staging_left_by_a_kill_is_cleared_but_a_users_hidden_folder_is_not(tmp_path, sources):
    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    stale = run.data / ".math.packing-0123456789ab"
    stale.mkdir(parents=True)
    (stale / "train.bin.tmp").write_bytes(b"\0" * 8)
    mine = run.data / ".code.packing-mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    prepare(cfg, run, progress=False)
    assert not stale.exists() and (mine / "keep.txt").read_text() == "mine"


def test_sources_inside_the_data_directory_or_holding_the_run_are_refused(tmp_path, sources):
    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    inner = run.data / "math" / "math.txt"
    inner.parent.mkdir(parents=True)
    inner.write_text("\n\n".join(_math_docs()))
    cfg.data.domains[1].source = str(inner)
    with pytest.raises(DemixError, match="of domain 'math' is inside the run's own data directory") as exc:
        prepare(cfg, run, progress=False)
    assert f"move it outside '{run.data}'" in exc.value.fix and inner.is_file()
    cfg.data.domains[1].source = str(tmp_path)
    with pytest.raises(DemixError, match="of domain 'math' contains the run directory"):
        prepare(cfg, run, progress=False)


def test_a_tokenizer_path_inside_the_runs_tokenizer_is_refused(tmp_path, sources):
    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    prepare(cfg, run, progress=False)
    cfg.tokenizer.path = str(run.tokenizer)
    with pytest.raises(DemixError, match="tokenizer.path .* is inside the run's own tokenizer directory"):
        prepare(cfg, run, progress=False)


def test_a_users_tokenizer_folder_where_the_run_writes_its_own_is_kept(tmp_path, sources):
    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    run.tokenizer.mkdir(parents=True)
    (run.tokenizer / "vocab.txt").write_text("mine")
    with pytest.raises(DemixError, match="is not a tokenizer demix saved"):
        prepare(cfg, run, progress=False)
    assert (run.tokenizer / "vocab.txt").read_text() == "mine" and not run.data.exists()


def test_a_run_prepared_by_an_older_demix_is_prepared_again(tmp_path, sources):
    """Its tokenizer has no marker, but the run's provenance.json says a finished prepare wrote it."""
    from demix.tokenizer import MARKER

    cfg = _config(tmp_path, sources)
    run = RunDir(cfg.run_dir)
    prepare(cfg, run, progress=False)
    (run.tokenizer / MARKER).unlink()
    assert prepare(cfg, run, progress=False, force=True)["skipped"] is False
    assert (run.tokenizer / MARKER).is_file()


def test_inside_refuses_paths_that_leave_the_run(tmp_path):
    from demix.packing import inside

    root = tmp_path / "run"
    (root / "data").mkdir(parents=True)
    assert inside(root, root / "data" / "math") == root / "data" / "math"
    for bad in (root / "data" / ".." / "..", root, root / ".." / "elsewhere"):
        with pytest.raises(DemixError, match=r"outside .*; demix writes and removes only inside it"):
            inside(root, bad)
    (tmp_path / "user").mkdir()
    (root / "data" / "linked").symlink_to(tmp_path / "user")
    with pytest.raises(DemixError, match=r"resolves to '.*user', outside"):
        inside(root, root / "data" / "linked")


# --------------------------------------------------------------------------- invalid UTF-8


def test_errors_replace_is_recorded_in_provenance_and_in_the_fingerprint(tmp_path, sources):
    from demix.prepare import data_fingerprint

    (sources / "math.txt").write_bytes("\n\n".join(_math_docs()).encode().replace(b"Problem 3.", b"Problem \xff3."))
    cfg = _config(tmp_path, sources)
    with pytest.raises(DemixError, match=r"math\.txt' is not valid UTF-8 at byte \d+ \(line \d+\)"):
        prepare(cfg, RunDir(cfg.run_dir), progress=False)
    strict = data_fingerprint(cfg)
    cfg.data.domains[1].errors = "replace"
    assert data_fingerprint(cfg) != strict
    result = prepare(cfg, RunDir(cfg.run_dir), progress=False)
    math = read_json(RunDir(cfg.run_dir).provenance)["domains"]["math"]
    assert math["errors"] == "replace" and result["domains"]["math"] == math
    assert math["invalid_utf8_replaced"] == {"total": 1, "files": {str(sources / "math.txt"): 1}}
    general = result["domains"]["general"]
    assert general["errors"] == "strict" and general["invalid_utf8_replaced"] == {"total": 0, "files": {}}


def test_adding_a_domain_to_a_trained_run_keeps_its_tokenizer_and_packs_only_the_new_domain(tmp_path, sources):
    """Once a base or component was trained with the run's tokenizer, a domain added to
    data.domains is packed with that tokenizer; the other domains' packs are kept as they are."""
    from demix.checkpoints import Provenance
    from demix.config import config_from_dict as from_dict

    full = _config(tmp_path, sources)
    raw = full.model_dump(mode="json")
    raw["data"]["domains"] = raw["data"]["domains"][:2]
    two = from_dict(raw)
    run = RunDir(two.run_dir)
    prepare(two, run, progress=False)
    tokenizer = (run.tokenizer / "tokenizer.json").read_bytes()
    packs = {p: p.stat().st_mtime_ns for p in run.data.rglob("*.bin")}
    run.base.mkdir(parents=True)
    Provenance(role="base").write(run.base)  # a finished base: trained with this tokenizer
    result = prepare(full, run, progress=False)
    assert (run.tokenizer / "tokenizer.json").read_bytes() == tokenizer
    assert {p: p.stat().st_mtime_ns for p in packs} == packs  # general and math not packed again
    assert PackedTokens.exists(split_prefix(run.data, "code", "train")) and is_prepared(full, run)
    assert result["domains"]["code"]["splits"]["train"]["tokens"] > 0
    # Without a trained model, a changed domain set trains the tokenizer again (as before).
    fresh = RunDir(tmp_path / "fresh")
    raw["output_dir"] = str(fresh.root)
    prepare(from_dict(raw), fresh, progress=False)
    raw["data"]["domains"] = full.model_dump(mode="json")["data"]["domains"]
    prepare(from_dict(raw), fresh, progress=False)
    assert (fresh.tokenizer / "tokenizer.json").read_bytes() != tokenizer


def test_a_checkpoint_of_another_tokenizer_is_named_by_what_differs():
    from demix.training.model import vocabulary_difference

    text = vocabulary_difference({"a": 0, "b": 1, "ab": 2}, {"a": 0, "b": 1, "ba": 2})
    assert "3 tokens in the checkpoint's, 3 in the run's" in text
    assert "only in the checkpoint's (e.g. 'ab')" in text and "only in the run's (e.g. 'ba')" in text
    assert "another id" in vocabulary_difference({"a": 0, "b": 1}, {"a": 1, "b": 0})
