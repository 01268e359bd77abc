"""The :class:`~copyloop.serve.store.Store` on PostgreSQL (psycopg 3): the same tables, the same
operations and the same group commit as :class:`~copyloop.serve.store.SQLiteStore`, for several
API processes and one learner sharing one database.

The operations are SQLiteStore's own — one portable SQL core — run through a thin connection
adapter (``?`` placeholders, ``executemany``/``executescript``, numeric results as Python
numbers); what differs is the dialect: the tables' types, the append-only triggers, ``BEGIN``,
a row lock (``FOR UPDATE``) on the decision a reward or an activation changes, so two replicas
and the learner serialise per event, and the time bucket. Durability: one writer thread per
process group-commits its queued writes in one transaction (``synchronous_commit`` on: the
acknowledgement follows the WAL flush), as the SQLite store does.

    >>> store = PostgresStore("postgresql://postgres@127.0.0.1:55432/copyloop")  # doctest: +SKIP
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from copyloop.serve.store import SQLiteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id TEXT PRIMARY KEY, config TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS variants (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, variant_id TEXT NOT NULL UNIQUE,
    campaign_id TEXT NOT NULL REFERENCES campaigns(campaign_id), text TEXT NOT NULL,
    embedding BYTEA, active INTEGER NOT NULL DEFAULT 1, created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,
    ts DOUBLE PRECISION NOT NULL, campaign_id TEXT NOT NULL, user_id TEXT,
    context BYTEA NOT NULL, candidates TEXT NOT NULL, action TEXT NOT NULL,
    action_index INTEGER NOT NULL, propensity DOUBLE PRECISION NOT NULL,
    action_probs TEXT NOT NULL, agent_action TEXT, agent_probs TEXT,
    model_version TEXT NOT NULL, policy_id TEXT NOT NULL, mode TEXT NOT NULL,
    activated INTEGER NOT NULL, deferred INTEGER NOT NULL, closes_at DOUBLE PRECISION NOT NULL,
    has_reward INTEGER NOT NULL DEFAULT 0, joined INTEGER NOT NULL DEFAULT 0,
    reward DOUBLE PRECISION, reward_source TEXT, learned INTEGER NOT NULL DEFAULT 0,
    model_id TEXT NOT NULL, early INTEGER NOT NULL, join_seq BIGINT);
CREATE INDEX IF NOT EXISTS decisions_open ON decisions(model_id, seq) WHERE joined=0;
CREATE INDEX IF NOT EXISTS decisions_join ON decisions(model_id, join_seq) WHERE learned=1;
CREATE INDEX IF NOT EXISTS decisions_campaign ON decisions(campaign_id, seq);
CREATE SEQUENCE IF NOT EXISTS join_seq;
CREATE TABLE IF NOT EXISTS rewards (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id TEXT NOT NULL,
    reward_id TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, ts DOUBLE PRECISION NOT NULL,
    late INTEGER NOT NULL, UNIQUE(event_id, reward_id));
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, salt BYTEA NOT NULL, hash BYTEA NOT NULL, scope TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS snapshots (
    model_id TEXT NOT NULL, version BIGINT NOT NULL, model_version TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, path TEXT NOT NULL, rows_learned BIGINT NOT NULL,
    through_join BIGINT NOT NULL, PRIMARY KEY (model_id, version));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS variant_sets (
    campaign_id TEXT NOT NULL, version BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, active TEXT NOT NULL, config TEXT NOT NULL,
    snapshot_version BIGINT, detail TEXT NOT NULL, PRIMARY KEY (campaign_id, version));
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ts DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);
CREATE OR REPLACE FUNCTION copyloop_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the % table is append-only', TG_TABLE_NAME;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION copyloop_append_only();
CREATE OR REPLACE TRIGGER variant_sets_append_only BEFORE UPDATE OR DELETE ON variant_sets
    FOR EACH ROW EXECUTE FUNCTION copyloop_append_only();
"""

_PLACEHOLDER = re.compile(r"\?")


def _plain(v: Any) -> Any:
    """PostgreSQL's sums and averages come back as ``Decimal``: as the Python number SQLite
    would have returned."""
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


class _Cursor:
    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def fetchone(self) -> tuple[Any, ...] | None:
        r = self._cur.fetchone()
        return None if r is None else tuple(_plain(v) for v in r)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(_plain(v) for v in r) for r in self._cur.fetchall()]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for r in self._cur:
            yield tuple(_plain(v) for v in r)


class _Connection:
    """A psycopg connection that speaks the SQLite store's SQL: ``?`` placeholders, and the
    integrity errors the service catches (``sqlite3.IntegrityError``, the store interface's
    error for a duplicate id whatever the backend)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        import psycopg

        try:
            return _Cursor(self._conn.execute(_PLACEHOLDER.sub("%s", sql), tuple(params)))
        except psycopg.errors.IntegrityError as e:
            raise sqlite3.IntegrityError(str(e).splitlines()[0]) from e

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> _Cursor:
        import psycopg

        cur = self._conn.cursor()
        try:
            cur.executemany(_PLACEHOLDER.sub("%s", sql), [tuple(r) for r in rows])
        except psycopg.errors.IntegrityError as e:
            raise sqlite3.IntegrityError(str(e).splitlines()[0]) from e
        return _Cursor(cur)

    def executescript(self, script: str) -> None:
        self._conn.execute(script)

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(self._conn.info.transaction_status != TransactionStatus.IDLE)

    def close(self) -> None:
        self._conn.close()


class PostgresStore(SQLiteStore):
    """The store on a PostgreSQL database (created tables if absent).

    Args:
        url: ``postgresql://user@host:port/db`` (libpq's connection string or URL).
        max_batch: most operations one transaction carries.

    Raises:
        ValueError: psycopg is not installed, or the database cannot be reached (the message
            says which and how to fix it).
    """

    _BEGIN = "BEGIN"
    _LOCK = " FOR UPDATE"
    _BUCKET = "floor(ts / ?)"

    def __init__(self, url: str, *, max_batch: int = 512) -> None:
        if max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1, got {max_batch}")
        try:
            import psycopg  # noqa: F401
        except ImportError as e:
            raise ValueError(
                f"{e}: the PostgreSQL store needs psycopg 3 (pip install 'copyloop[serve]')"
            ) from None
        self.url = url
        self.path = None  # type: ignore[assignment]
        self._synchronous = "FULL"
        self._start(max_batch)

    def _connect(self) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.OperationalError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"cannot reach the PostgreSQL store {self.url!r}: {first} — start one "
                "(bash scripts/pg.sh start) or fix the URL"
            ) from None
        conn.execute("SET synchronous_commit = on")
        return _Connection(conn)

    def _create_tables(self, conn: Any) -> None:
        # one session at a time creates the tables (replicas may start together)
        conn.execute("SELECT pg_advisory_lock(7220731)")
        try:
            conn.executescript(_SCHEMA)
        finally:
            conn.execute("SELECT pg_advisory_unlock(7220731)")

    def _next_join_seq(self, c: Any) -> int:
        # from the database, not this process: the learner process is not the one that wrote
        # the decisions, and a restarted learner continues the sequence
        (seq,) = c.execute("SELECT nextval('join_seq')").fetchone()
        return int(seq)

    def _prelock(self, conn: Any, batch: list[Any]) -> None:
        # every existing decision row the batch will read FOR UPDATE or change, locked in one
        # statement in the database's own sort order: two processes' batches then wait for
        # each other instead of deadlocking (rows locked as the sorted scan returns them)
        keys = sorted({k for _, _, ks in batch for k in ks})
        if keys:
            conn.execute(
                "SELECT 1 FROM decisions WHERE event_id = ANY(?) ORDER BY event_id FOR UPDATE",
                (keys,),
            )

    def _transient(self, e: BaseException) -> bool:
        import psycopg

        # two processes' batches lock decision rows in different orders; PostgreSQL aborts one
        # (the locks it already holds stay until ROLLBACK, so the whole batch is rerun)
        return isinstance(e, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure)
