"""Engine and session factory: the registry's only I/O edge to the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from registry.settings import DatabaseSettings


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned per backend.

    SQLite: WAL so readers (the gateway) never block the writer (workers),
    and a busy timeout so concurrent writers wait instead of failing.
    JSON columns go through orjson (bulk ingest writes one request per row).
    """
    kwargs.setdefault("json_serializer", _json_dumps)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "savepoint")
        def _begin_before_savepoint(conn: Connection, _name: str) -> None:
            # pysqlite BEGINs only before DML, so a SAVEPOINT sent first opens the
            # transaction itself and its RELEASE commits it: a later rollback of
            # the enclosing transaction would then keep what the savepoint wrote.
            dbapi_conn: Any = conn.connection.dbapi_connection
            if not dbapi_conn.in_transaction:
                dbapi_conn.execute("BEGIN")

        return engine
    # A short connect timeout: an unreachable database must give a fast 503, not a hung request.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 3}, **kwargs)


def write_lock(session: Session) -> None:
    """On SQLite, take the database's write lock now (``BEGIN IMMEDIATE``, waiting up to the busy
    timeout), so what this transaction reads next is what it will update: pysqlite would only begin
    at the first write, and a read before it could be stale. PostgreSQL locks rows instead
    (``SELECT ... FOR UPDATE``); there this does nothing."""
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        return
    dbapi_conn: Any = conn.connection.dbapi_connection
    if not dbapi_conn.in_transaction:
        dbapi_conn.execute("BEGIN IMMEDIATE")


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def engine_from_settings(settings: DatabaseSettings) -> Engine:
    return make_engine(settings.url())


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session
