"""The SQLite store: claim/complete, uniqueness, pending rows, corrupt files."""

import sqlite3

import pytest

from demix.errors import DemixError
from demix.store import Store

M1 = {"general": 0.5, "math": 0.3, "code": 0.2}
M2 = {"general": 0.2, "math": 0.3, "code": 0.5}


def url(tmp_path):
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


def test_add_get_and_uniqueness_per_proxy_kind(tmp_path):
    with Store(url(tmp_path)) as s:
        assert s.add(M1, {"bpb": 1.2}, {"general": -1.2}, round=0, provenance={"seed": 1})
        assert not s.add(dict(M1), {"bpb": 9.9}, {"general": 9.9})  # same mixture: not stored twice
        assert s.add(M1, {"bpb": 1.4}, {"general": -1.4}, proxy_kind="trained")
        got = s.get(M1)
        assert got.benchmarks == {"bpb": 1.2} and got.round == 0 and got.provenance == {"seed": 1}
        assert s.get(M2) is None
        assert s.count("merged") == 1 and s.count() == 2
    # A fresh connection sees the committed rows.
    with Store(url(tmp_path)) as s:
        assert [e.weights for e in s.evaluations_done("merged")] == [M1]


def test_replace_rescores_a_finished_row_in_place(tmp_path):
    with Store(url(tmp_path)) as s:
        assert not s.replace(M1, {"bpb": 1.0}, {"general": -1.0})  # nothing to replace
        s.add(M1, {"bpb": 1.2}, {"general": -1.2}, round=0, provenance={"seed": 1})
        s.add(M1, {"bpb": 1.4}, {"general": -1.4}, proxy_kind="trained")
        before = s.get(M1)
        assert s.replace(M1, {"bpb": 1.1, "acc": 0.3}, {"general": -1.1}, provenance={"seed": 1, "again": True})
        after = s.get(M1)
        assert after.id == before.id and s.count() == 2
        assert after.benchmarks == {"bpb": 1.1, "acc": 0.3} and after.provenance == {"seed": 1, "again": True}
        assert s.get(M1, "trained").benchmarks == {"bpb": 1.4}  # other kinds untouched
        with pytest.raises(DemixError):
            s.replace(M1, {"bpb": float("nan")}, {"general": 0.0})


def test_claim_complete_and_release_pending(tmp_path):
    with Store(url(tmp_path)) as s:
        assert s.claim(M1, round=0)
        assert not s.claim(M1)  # a second driver loses the claim
        assert s.evaluations_done() == [] and s.count(status="pending") == 1
        s.complete(M1, {"b": 1.0}, {"c": 2.0})
        assert s.done_keys() == {s.get(M1).mixture_key}
        with pytest.raises(DemixError, match="not claimed"):
            s.complete(M2, {"b": 1.0}, {"c": 2.0})
        assert s.claim(M2)
        assert s.release_pending() == 1  # a killed driver's unfinished evaluation
        assert s.claim(M2)


def test_non_finite_scores_are_refused(tmp_path):
    with Store(url(tmp_path)) as s:
        s.claim(M1)
        with pytest.raises(DemixError, match="non-finite"):
            s.complete(M1, {"b": float("nan")}, {"c": 1.0})


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DemixError, match="store.sqlite' is not a demix store or is corrupt"):
        Store(url(tmp_path))


def test_foreign_database_is_refused(tmp_path):
    con = sqlite3.connect(tmp_path / "store.sqlite")
    con.execute("create table users (id integer)")
    con.commit()
    con.close()
    with pytest.raises(DemixError, match="other tables"):
        Store(url(tmp_path))


def test_unreadable_row_is_named(tmp_path):
    with Store(url(tmp_path)) as s:
        s.add(M1, {"b": 1.0}, {"c": 1.0})
    con = sqlite3.connect(tmp_path / "store.sqlite")
    con.execute("update evaluations set benchmarks = '{broken'")
    con.commit()
    con.close()
    with Store(url(tmp_path)) as s, pytest.raises(DemixError, match="row 1 has unreadable JSON"):
        s.evaluations_done()


def test_full_disk_is_named_and_keeps_the_store(tmp_path):
    """sqlite's "database or disk is full" (here from its own page cap, the error a full file
    system gives) is one DemixError saying to free space, not a traceback and not "corrupt";
    what was stored before is still there."""
    import sqlalchemy as sa

    store = Store(url(tmp_path))
    store.add(M1, {"b": 1.0}, {"c": 1.0})

    @sa.event.listens_for(store.engine, "connect")
    def _cap_pages(dbapi, _record):
        pages = dbapi.execute("PRAGMA page_count").fetchone()[0]
        dbapi.execute(f"PRAGMA max_page_count = {pages}")

    store.engine.dispose()  # new connections get the cap
    with pytest.raises(DemixError, match="cannot be read or written .*disk is full") as err:
        for i in range(1, 500):
            store.add({"general": 1.0 - i / 1000, "math": i / 1000}, {"b": 1.0}, {"c": 1.0}, provenance={"pad": "x" * 4000})
    assert "free disk space" in err.value.fix and "corrupt" not in str(err.value)
    store.close()
    with Store(url(tmp_path)) as again:
        assert again.get(M1) is not None
