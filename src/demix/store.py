"""The store: every evaluated mixture with its scores, in a SQL database (SQLAlchemy 2 Core).

One row per (mixture_key, proxy_kind), unique. The write path is two steps so that several
drivers can share one server database later:

1. :meth:`Store.claim` inserts a *pending* row; the unique constraint makes exactly one driver
   win a given mixture (the others get False and skip it).
2. :meth:`Store.complete` fills in the scores and marks the row *done*, in one committed
   transaction, before the next evaluation starts.

With one driver (SQLite, the default), pending rows left by a killed process are evaluations
that never finished: :meth:`Store.release_pending` deletes them when the search restarts, so
they are evaluated again, while done rows are never evaluated twice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from demix.errors import DemixError
from demix.mixtures import mixture_key

SCHEMA_VERSION = 1
PROXY_KINDS = ("merged", "trained", "reference")


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


class Store:
    """Evaluated mixtures in a database given by a SQLAlchemy URL (``sqlite:///path`` by default)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url = url
        self._sa = sa
        self._meta, self.evaluations, self.info = _tables()
        path = self._sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(url, future=True)
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
        where = self._sqlite_path() or self.url
        return DemixError(
            f"the store '{where}' is not a demix store or is corrupt ({detail})",
            "move the file away (a new store is created) or point store.url at the right database",
        )

    def _open(self) -> None:
        sa = self._sa
        try:
            with self.engine.begin() as conn:
                inspector = sa.inspect(conn)
                tables = set(inspector.get_table_names())
                if "evaluations" in tables:
                    cols = {c["name"] for c in inspector.get_columns("evaluations")}
                    missing = {c.name for c in self.evaluations.columns} - cols
                    if missing:
                        raise self._corrupt(f"table 'evaluations' lacks columns {sorted(missing)}")
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
        except sa.exc.DatabaseError as exc:
            raise self._corrupt(str(exc.orig).splitlines()[0] if exc.orig else str(exc)) from None

    # ------------------------------------------------------------------ writes

    def claim(
        self,
        mixture: Mapping[str, float],
        proxy_kind: str = "merged",
        round: int | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> bool:
        """Insert a pending row for this mixture; False when a row (pending or done) exists."""
        if proxy_kind not in PROXY_KINDS:
            raise DemixError(f"unknown proxy kind '{proxy_kind}'", f"use one of {', '.join(PROXY_KINDS)}")
        sa = self._sa
        row = {
            "mixture_key": mixture_key(mixture),
            "proxy_kind": proxy_kind,
            "status": "pending",
            "round": round,
            "weights": _dumps({k: float(v) for k, v in mixture.items()}, "weights"),
            "provenance": _dumps(dict(provenance or {}), "provenance"),
            "created_at": _now(),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(self.evaluations.insert().values(**row))
        except sa.exc.IntegrityError:
            return False
        return True

    def complete(
        self,
        mixture: Mapping[str, float],
        benchmarks: Mapping[str, float],
        capabilities: Mapping[str, float],
        proxy_kind: str = "merged",
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        """Store the scores of a claimed mixture and mark it done (committed on return)."""
        key = mixture_key(mixture)
        values: dict[str, Any] = {
            "status": "done",
            "benchmarks": _dumps(_scores(benchmarks, "benchmark"), "benchmarks"),
            "capabilities": _dumps(_scores(capabilities, "capability"), "capabilities"),
            "completed_at": _now(),
        }
        if provenance is not None:
            values["provenance"] = _dumps(dict(provenance), "provenance")
        t = self.evaluations
        with self.engine.begin() as conn:
            res = conn.execute(
                t.update().where(t.c.mixture_key == key, t.c.proxy_kind == proxy_kind, t.c.status == "pending").values(**values)
            )
            if res.rowcount != 1:
                raise DemixError(
                    f"mixture {key} ({proxy_kind}) was not claimed before completing it, or is already done",
                    "call Store.claim first (a second driver may have finished it)",
                )

    def add(
        self,
        mixture: Mapping[str, float],
        benchmarks: Mapping[str, float],
        capabilities: Mapping[str, float],
        proxy_kind: str = "merged",
        round: int | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> bool:
        """Claim and complete in one call; False (and nothing written) when the mixture is stored."""
        if not self.claim(mixture, proxy_kind, round, provenance):
            return False
        self.complete(mixture, benchmarks, capabilities, proxy_kind)
        return True

    def release_pending(self, proxy_kind: str | None = None) -> int:
        """Delete pending rows (evaluations a killed single driver never finished). Returns how many.

        Only safe when no other driver is running on this store."""
        t = self.evaluations
        cond = t.c.status == "pending"
        if proxy_kind is not None:
            cond = cond & (t.c.proxy_kind == proxy_kind)
        with self.engine.begin() as conn:
            return conn.execute(t.delete().where(cond)).rowcount

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
            with self.engine.connect() as conn:
                rows = conn.execute(q.order_by(t.c.id)).all()
        except sa.exc.DatabaseError as exc:
            raise self._corrupt(str(exc.orig).splitlines()[0] if exc.orig else str(exc)) from None
        return [self._row(r) for r in rows]

    def get(self, mixture: Mapping[str, float], proxy_kind: str = "merged") -> Evaluation | None:
        """The finished evaluation of this mixture, or None."""
        sa = self._sa
        t = self.evaluations
        q = sa.select(t).where(
            t.c.mixture_key == mixture_key(mixture), t.c.proxy_kind == proxy_kind, t.c.status == "done"
        )
        with self.engine.connect() as conn:
            r = conn.execute(q).first()
        return self._row(r) if r is not None else None

    def done_keys(self, proxy_kind: str = "merged") -> set[str]:
        """Keys of the finished evaluations of one proxy kind."""
        sa = self._sa
        t = self.evaluations
        with self.engine.connect() as conn:
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
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
