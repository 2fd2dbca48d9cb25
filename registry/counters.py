"""Counter rows that many writers add to at once, with one portable upsert (SQLite and PostgreSQL).

``INSERT ... ON CONFLICT (key) DO UPDATE SET n = n + excluded.n`` creates the row or adds to it in
one statement under the row's lock, so concurrent writers (several gateways, several workers) never
lose an increment and a missing row is never a race. Rows are written in key order, and every
transaction takes counter tables in one order (``registry.transitions``), so two writers cannot
deadlock on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from registry.models import Base

Amounts = Mapping[str, int | float]


def table_of(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def add(session: Session, model: type[Base], deltas: Mapping[tuple[Any, ...], Amounts], *, key: Sequence[str]) -> None:
    """Add ``deltas`` (key values in ``key``'s order -> column -> amount; every delta names the same
    columns) to ``model``'s rows, creating the rows that do not exist yet. All-zero deltas are skipped."""
    rows = [
        {**dict(zip(key, k, strict=True)), **amounts} for k, amounts in sorted(deltas.items()) if any(amounts.values())
    ]
    if not rows:
        return
    table = table_of(model)
    stmt = insert(session, table)
    columns = [c for c in rows[0] if c not in key]
    session.execute(
        stmt.on_conflict_do_update(index_elements=list(key), set_={c: table.c[c] + stmt.excluded[c] for c in columns}),
        rows,
    )


def ensure(session: Session, model: type[Base], key: Mapping[str, Any]) -> None:
    """Create the row at ``key`` (its counters at their defaults) unless it exists."""
    session.execute(insert(session, table_of(model)).values(dict(key)).on_conflict_do_nothing())


def insert(session: Session, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with ``on_conflict_do_update`` / ``on_conflict_do_nothing``, in the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
