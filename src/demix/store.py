"""The store: every evaluated mixture with its scores, in a SQL database (SQLAlchemy 2 Core).

One row per (mixture_key, proxy_kind), unique. The write path is two steps so that several
drivers (search processes, Slurm workers) can share one server database (PostgreSQL) safely:

1. :meth:`Store.claim` inserts a *pending* row owned by this driver with a lease
   (``INSERT ... ON CONFLICT DO NOTHING``): the unique constraint makes exactly one driver win a
   given mixture; the others get False and skip it (or wait for its result).
2. :meth:`Store.complete` fills in the scores and marks the row *done*, in one committed
   transaction, before the next evaluation starts.

Every Store object is one *driver* with its own ``owner`` id (``host:pid:random``). A pending
row is an evaluation in flight; it is given up, so that another driver can claim it, when

- its lease (``lease_seconds`` after the claim or the last :meth:`Store.renew`) has expired: a
  driver on another machine died;
- its owner is a process on this machine that no longer exists: a killed local run, released
  at once instead of after the lease;
- its owner releases it (:meth:`Store.release_pending` of the same driver).

A live driver's claims are never taken from it, so two drivers never evaluate the same
mixture at the same time, and a done row is never evaluated again.

Why one module of ~580 lines: the claim protocol (claim, renew, release, complete), the
schema it runs on (tables, the version-2 migration, the PostgreSQL lock) and the error
translation of every read and write must be read together to see that it is safe; splitting
them would hide the invariant across files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demix.errors import DemixError
from demix.mixtures import mixture_key
from demix.proxy_kind import KINDS, MERGED, is_known

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.dialects.postgresql import Insert as PostgresqlInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

SCHEMA_VERSION = 2
#: Default lease of a claim (seconds): it must outlast the longest single evaluation, since a
#: driver renews its leases between evaluations. Expired claims are re-queued to other drivers.
DEFAULT_LEASE_SECONDS = 1800.0
#: Columns added in schema version 2 (claims with owners and leases); older stores get them.
_V2_COLUMNS = {"owner": "VARCHAR(128)", "lease_expires": "FLOAT"}
#: Key of the PostgreSQL advisory lock that serialises schema creation between drivers.
_SCHEMA_LOCK = 0x64656D6978  # "demix"


def _tables():
    import sqlalchemy as sa

    meta = sa.MetaData()
    evaluations = sa.Table(
        "evaluations",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("mixture_key", sa.String(32), nullable=False),
        sa.Column("proxy_kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # pending | done
        sa.Column("round", sa.Integer, nullable=True),
        sa.Column("weights", sa.Text, nullable=False),  # JSON {domain: weight}
        sa.Column("benchmarks", sa.Text, nullable=True),  # JSON {benchmark: raw metric}
        sa.Column("capabilities", sa.Text, nullable=True),  # JSON {capability: score, higher is better}
        sa.Column("provenance", sa.Text, nullable=True),  # JSON
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("completed_at", sa.String(40), nullable=True),
        sa.Column("owner", sa.String(128), nullable=True),  # driver holding a pending row
        sa.Column("lease_expires", sa.Float, nullable=True),  # unix seconds; pending rows only
        sa.UniqueConstraint("mixture_key", "proxy_kind", name="uq_mixture_kind"),
    )
    info = sa.Table(
        "demix_store",
        meta,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    return meta, evaluations, info


@dataclass(frozen=True)
class Evaluation:
    """One finished evaluation read from the store."""

    id: int
    mixture_key: str
    proxy_kind: str
    round: int | None
    weights: dict[str, float]
    benchmarks: dict[str, float]
    capabilities: dict[str, float]
    provenance: dict[str, Any]
    created_at: str
    completed_at: str | None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_owner_id() -> str:
    """A driver id, unique across machines and processes: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _owner_is_dead_local_process(owner: str | None) -> bool:
    """True when ``owner`` is a process of this machine that has exited (its claims are void)."""
    if not owner:
        return True  # a schema-1 row: written by a single driver that is not running now
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine: only its lease tells
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False


def _dumps(data: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(data, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DemixError(f"cannot store {what}: {exc}", "scores must be finite numbers keyed by name") from None


def _scores(data: Mapping[str, Any] | None, what: str) -> dict[str, float]:
    out = {}
    for k, v in (data or {}).items():
        v = float(v)
        if not math.isfinite(v):
            raise DemixError(f"{what} '{k}' is {v}", "the evaluation produced a non-finite score; check the proxy")
        out[str(k)] = v
    return out


def _score_values(
    benchmarks: Mapping[str, float], capabilities: Mapping[str, float], provenance: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The columns a finished evaluation writes (scores checked finite, JSON-encoded)."""
    values: dict[str, Any] = {
        "benchmarks": _dumps(_scores(benchmarks, "benchmark"), "benchmarks"),
        "capabilities": _dumps(_scores(capabilities, "capability"), "capabilities"),
        "completed_at": _now(),
    }
    if provenance is not None:
        values["provenance"] = _dumps(dict(provenance), "provenance")
    return values


#: sqlite messages of an intact store that cannot be read or written (disk full, permissions).
_IO_ERRORS = ("disk i/o error", "database or disk is full", "readonly database", "unable to open database file")


class Store:
    """Evaluated mixtures in a database given by a SQLAlchemy URL (``sqlite:///path`` by default,
    ``postgresql+psycopg://user@host/db`` for several drivers).

    ``owner`` names this driver (default: a fresh ``host:pid:random``); ``lease_seconds`` is how
    long its claims stay reserved without a :meth:`renew`.
    """

    def __init__(self, url: str, owner: str | None = None, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        import sqlalchemy as sa

        if lease_seconds <= 0:
            raise DemixError(f"store lease of {lease_seconds} s", "use a positive store.lease_seconds")
        self.url = url
        self.owner = owner or new_owner_id()
        self.lease_seconds = float(lease_seconds)
        self._sa = sa
        self._meta, self.evaluations, self.info = _tables()
        path = self._sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # pool_pre_ping: a server restart between two evaluations must not fail the next write.
            self.engine = sa.create_engine(url, future=True, pool_pre_ping=path is None)
        except ModuleNotFoundError as exc:
            raise DemixError(
                f"cannot open the store '{url}': its database driver '{exc.name}' is not installed",
                "for PostgreSQL: pip install 'demix-llm[postgres]' and use a postgresql+psycopg:// URL",
            ) from None
        except Exception as exc:  # bad URL or missing driver
            raise DemixError(f"cannot open the store '{url}' ({exc})", "set store.url to a valid SQLAlchemy URL") from None
        if path is not None:
            # WAL: a killed writer never corrupts committed rows, readers are not blocked.
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(conn, _record):  # pragma: no cover - trivial
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.close()

        self._open()

    def _sqlite_path(self) -> Path | None:
        if self.url.startswith("sqlite:///") and self.url != "sqlite:///:memory:":
            return Path(self.url[len("sqlite:///") :])
        return None

    def _corrupt(self, detail: str) -> DemixError:
        where = self._sqlite_path() or self._safe_url()
        low = detail.lower()
        # sqlite reports a full disk, a read-only file or directory and a missing directory as
        # OperationalError too: the store is intact then, and moving it away would lose nothing
        # but be the wrong advice.
        if any(s in low for s in _IO_ERRORS):
            return DemixError(
                f"the store '{where}' cannot be read or written ({detail})",
                "free disk space on its file system and check that its file and directory are writable; "
                "the stored evaluations are kept",
            )
        return DemixError(
            f"the store '{where}' is not a demix store or is corrupt ({detail})",
            "move the file away (a new store is created) or point store.url at the right database",
        )

    def _open(self) -> None:
        sa = self._sa
        try:
            with self.engine.begin() as conn:
                if self.engine.dialect.name == "postgresql":
                    # Drivers starting together must not both create the tables.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
                inspector = sa.inspect(conn)
                tables = set(inspector.get_table_names())
                if "evaluations" in tables:
                    cols = {c["name"] for c in inspector.get_columns("evaluations")}
                    missing = {c.name for c in self.evaluations.columns} - cols
                    if missing - set(_V2_COLUMNS):
                        raise self._corrupt(f"table 'evaluations' lacks columns {sorted(missing)}")
                    for col in sorted(missing):  # a schema-1 store: add the claim columns
                        conn.execute(sa.text(f"ALTER TABLE evaluations ADD COLUMN {col} {_V2_COLUMNS[col]}"))
                elif tables - {"demix_store"}:
                    raise self._corrupt(f"it holds other tables {sorted(tables)}")
                self._meta.create_all(conn)
                version = conn.execute(sa.select(self.info.c.value).where(self.info.c.key == "schema_version")).scalar()
                if version is None:
                    conn.execute(self.info.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(version) > SCHEMA_VERSION:
                    raise DemixError(
                        f"the store '{self.url}' has schema version {version}, newer than this demix ({SCHEMA_VERSION})",
                        "upgrade demix",
                    )
                elif int(version) < SCHEMA_VERSION:
                    conn.execute(
                        self.info.update().where(self.info.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
                    )
        except sa.exc.OperationalError as exc:
            if self._sqlite_path() is None:
                detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                raise DemixError(
                    f"cannot connect to the store '{self._safe_url()}' ({detail})",
                    "check that the database server runs and store.url (host, port, user, database) is right",
                ) from None
            raise self._corrupt(str(exc.orig).splitlines()[0] if exc.orig else str(exc)) from None
        except sa.exc.DatabaseError as exc:
            raise self._corrupt(str(exc.orig).splitlines()[0] if exc.orig else str(exc)) from None

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Any]:
        """``engine.begin()`` whose database errors (a full disk, a lost server) are one DemixError."""
        with self._translated(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        """``engine.connect()``, errors translated as in :meth:`_begin`."""
        with self._translated(), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        sa = self._sa
        try:
            yield
        except sa.exc.IntegrityError:
            raise  # a unique conflict: the callers handle it
        except sa.exc.DBAPIError as exc:
            detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if self._sqlite_path() is not None:
                raise self._corrupt(detail) from None
            raise DemixError(
                f"the store '{self._safe_url()}' failed ({detail})",
                "check that the database server runs and is reachable; the stored evaluations are kept",
            ) from None

    def _safe_url(self) -> str:
        """The URL without its password (for messages)."""
        try:
            return self.engine.url.render_as_string(hide_password=True)
        except Exception:  # pragma: no cover - url always parses once the engine exists
            return "<store url>"

    def _insert_ignore(self, row: dict[str, Any]) -> bool:
        """INSERT that does nothing on a unique conflict; True when the row was inserted."""
        sa = self._sa
        dialect = self.engine.dialect.name
        if dialect in ("postgresql", "sqlite"):
            stmt: PostgresqlInsert | SqliteInsert
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as postgresql_insert

                stmt = postgresql_insert(self.evaluations)
            else:
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                stmt = sqlite_insert(self.evaluations)
            stmt = stmt.values(**row).on_conflict_do_nothing(index_elements=["mixture_key", "proxy_kind"])
            with self._begin() as conn:
                if dialect == "sqlite":
                    return conn.execute(stmt).rowcount == 1
                # psycopg reports no rowcount for a skipped insert: ask for the new id instead.
                return conn.execute(stmt.returning(self.evaluations.c.id)).first() is not None
        try:  # other databases: the unique constraint raises
            with self._begin() as conn:
                conn.execute(self.evaluations.insert().values(**row))
        except sa.exc.IntegrityError:
            return False
        return True

    # ------------------------------------------------------------------ writes

    def claim(
        self,
        mixture: Mapping[str, float],
        proxy_kind: str = MERGED,
        round: int | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> bool:
        """Claim this mixture for this driver; False when it is done or a live driver holds it.

        A pending row whose lease expired, or whose owner is a dead process of this machine, is
        taken over (re-queued here); the takeover is one conditional UPDATE, so of several
        drivers trying at once exactly one wins."""
        if not is_known(proxy_kind):
            raise DemixError(
                f"unknown proxy kind '{proxy_kind}'", f"use one of {', '.join(KINDS)}, trained@<tokens> or screened@<fraction>"
            )
        sa = self._sa
        row = {
            "mixture_key": mixture_key(mixture),
            "proxy_kind": proxy_kind,
            "status": "pending",
            "round": round,
            "weights": _dumps({k: float(v) for k, v in mixture.items()}, "weights"),
            "provenance": _dumps(dict(provenance or {}), "provenance"),
            "created_at": _now(),
            "owner": self.owner,
            "lease_expires": time.time() + self.lease_seconds,
        }
        if self._insert_ignore(row):
            return True
        t = self.evaluations
        where = (t.c.mixture_key == row["mixture_key"]) & (t.c.proxy_kind == proxy_kind) & (t.c.status == "pending")
        with self._connect() as conn:
            current = conn.execute(sa.select(t.c.owner, t.c.lease_expires).where(where)).first()
        if current is None:
            return False  # done
        expired = current.lease_expires is None or current.lease_expires < time.time()
        if not (expired or _owner_is_dead_local_process(current.owner)):
            return False  # a live driver evaluates it
        # Take over only if the row is still the one we judged abandoned (same owner, same lease).
        same = (t.c.owner == current.owner) if current.owner is not None else t.c.owner.is_(None)
        same_lease = (
            (t.c.lease_expires == current.lease_expires) if current.lease_expires is not None else t.c.lease_expires.is_(None)
        )
        values = {"owner": self.owner, "lease_expires": row["lease_expires"], "round": round, "created_at": row["created_at"]}
        with self._begin() as conn:
            return conn.execute(t.update().where(where & same & same_lease).values(**values)).rowcount == 1

    def complete(
        self,
        mixture: Mapping[str, float],
        benchmarks: Mapping[str, float],
        capabilities: Mapping[str, float],
        proxy_kind: str = MERGED,
        provenance: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store the scores of a claimed mixture and mark it done (committed on return).

        True when stored. False when another driver finished the same mixture first (possible
        only after this driver's lease expired and the mixture was re-queued): its result is
        kept and this one dropped, so no mixture is stored twice."""
        key = mixture_key(mixture)
        values = {"status": "done", "owner": None, "lease_expires": None,
                  **_score_values(benchmarks, capabilities, provenance)}
        t = self.evaluations
        with self._begin() as conn:
            res = conn.execute(
                t.update().where(t.c.mixture_key == key, t.c.proxy_kind == proxy_kind, t.c.status == "pending").values(**values)
            )
            if res.rowcount == 1:
                return True
            done = conn.execute(
                self._sa.select(t.c.id).where(t.c.mixture_key == key, t.c.proxy_kind == proxy_kind, t.c.status == "done")
            ).first()
        if done is not None:
            return False
        raise DemixError(
            f"mixture {key} ({proxy_kind}) was not claimed before completing it",
            "call Store.claim first",
        )

    def add(
        self,
        mixture: Mapping[str, float],
        benchmarks: Mapping[str, float],
        capabilities: Mapping[str, float],
        proxy_kind: str = MERGED,
        round: int | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> bool:
        """Claim and complete in one call; False (and nothing written) when the mixture is stored."""
        if not self.claim(mixture, proxy_kind, round, provenance):
            return False
        return self.complete(mixture, benchmarks, capabilities, proxy_kind)

    def replace(
        self,
        mixture: Mapping[str, float],
        benchmarks: Mapping[str, float],
        capabilities: Mapping[str, float],
        proxy_kind: str = MERGED,
        provenance: Mapping[str, Any] | None = None,
    ) -> bool:
        """Overwrite the scores (and provenance) of a finished evaluation, e.g. after the
        configured benchmarks changed and the same model was evaluated again. False when the
        mixture has no finished row of that kind (nothing written)."""
        values = _score_values(benchmarks, capabilities, provenance)
        t = self.evaluations
        where = (t.c.mixture_key == mixture_key(mixture)) & (t.c.proxy_kind == proxy_kind) & (t.c.status == "done")
        with self._begin() as conn:
            return conn.execute(t.update().where(where).values(**values)).rowcount == 1

    def annotate(self, key: str, provenance: Mapping[str, Any], proxy_kind: str = MERGED) -> bool:
        """Replace the provenance of the finished evaluation with mixture key ``key`` (scores
        untouched), e.g. to record per-component fingerprints in a row of an older demix. False
        when there is no finished row of that key and kind (nothing written)."""
        t = self.evaluations
        where = (t.c.mixture_key == key) & (t.c.proxy_kind == proxy_kind) & (t.c.status == "done")
        with self._begin() as conn:
            values = {"provenance": _dumps(dict(provenance), "provenance")}
            return conn.execute(t.update().where(where).values(**values)).rowcount == 1

    def renew(self) -> int:
        """Extend the lease of every pending row this driver holds (call between evaluations)."""
        t = self.evaluations
        with self._begin() as conn:
            return conn.execute(
                t.update()
                .where(t.c.status == "pending", t.c.owner == self.owner)
                .values(lease_expires=time.time() + self.lease_seconds)
            ).rowcount

    def release_pending(self, proxy_kind: str | None = None) -> int:
        """Delete pending rows of dead or finished drivers, so they are evaluated again. Returns how many.

        Released: rows held by this driver, by a process of this machine that has exited (a
        killed run), or by a schema-1 driver. Claims of live drivers are kept, so this is safe
        while other drivers run on the same store; the claims of a driver on another machine
        that died are re-queued by :meth:`claim` once their lease expires."""
        sa = self._sa
        t = self.evaluations
        cond = t.c.status == "pending"
        if proxy_kind is not None:
            cond = cond & (t.c.proxy_kind == proxy_kind)
        with self._connect() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.owner).where(cond)).all()
        dead = [r for r in rows if r.owner == self.owner or _owner_is_dead_local_process(r.owner)]
        n = 0
        with self._begin() as conn:
            for r in dead:
                # Same owner re-checked in the delete: a row taken over meanwhile is not ours to drop.
                same = (t.c.owner == r.owner) if r.owner is not None else t.c.owner.is_(None)
                n += conn.execute(t.delete().where((t.c.id == r.id) & (t.c.status == "pending") & same)).rowcount
        return n

    def pending_keys(self, proxy_kind: str = MERGED) -> dict[str, str | None]:
        """Keys of the pending rows (evaluations in flight) -> the driver holding each."""
        sa = self._sa
        t = self.evaluations
        with self._connect() as conn:
            rows = conn.execute(
                sa.select(t.c.mixture_key, t.c.owner).where(t.c.proxy_kind == proxy_kind, t.c.status == "pending")
            ).all()
        return {r[0]: r[1] for r in rows}

    # ------------------------------------------------------------------ reads

    def _row(self, r: Any) -> Evaluation:
        try:
            return Evaluation(
                id=r.id,
                mixture_key=r.mixture_key,
                proxy_kind=r.proxy_kind,
                round=r.round,
                weights=json.loads(r.weights),
                benchmarks=json.loads(r.benchmarks or "{}"),
                capabilities=json.loads(r.capabilities or "{}"),
                provenance=json.loads(r.provenance or "{}"),
                created_at=r.created_at,
                completed_at=r.completed_at,
            )
        except (TypeError, ValueError) as exc:
            raise self._corrupt(f"row {r.id} has unreadable JSON: {exc}") from None

    def evaluations_done(self, proxy_kind: str | None = None) -> list[Evaluation]:
        """Every finished evaluation (of one proxy kind, or all), in the order they were stored."""
        sa = self._sa
        t = self.evaluations
        q = sa.select(t).where(t.c.status == "done")
        if proxy_kind is not None:
            q = q.where(t.c.proxy_kind == proxy_kind)
        try:
            with self._connect() as conn:
                rows = conn.execute(q.order_by(t.c.id)).all()
        except sa.exc.DatabaseError as exc:
            raise self._corrupt(str(exc.orig).splitlines()[0] if exc.orig else str(exc)) from None
        return [self._row(r) for r in rows]

    def get(self, mixture: Mapping[str, float], proxy_kind: str = MERGED) -> Evaluation | None:
        """The finished evaluation of this mixture, or None."""
        sa = self._sa
        t = self.evaluations
        q = sa.select(t).where(
            t.c.mixture_key == mixture_key(mixture), t.c.proxy_kind == proxy_kind, t.c.status == "done"
        )
        with self._connect() as conn:
            r = conn.execute(q).first()
        return self._row(r) if r is not None else None

    def done_keys(self, proxy_kind: str = MERGED) -> set[str]:
        """Keys of the finished evaluations of one proxy kind."""
        sa = self._sa
        t = self.evaluations
        with self._connect() as conn:
            rows = conn.execute(
                sa.select(t.c.mixture_key).where(t.c.proxy_kind == proxy_kind, t.c.status == "done")
            ).all()
        return {r[0] for r in rows}

    def count(self, proxy_kind: str | None = None, status: str = "done") -> int:
        """Number of rows with this status (of one proxy kind, or all)."""
        sa = self._sa
        t = self.evaluations
        q = sa.select(sa.func.count()).select_from(t).where(t.c.status == status)
        if proxy_kind is not None:
            q = q.where(t.c.proxy_kind == proxy_kind)
        with self._connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
