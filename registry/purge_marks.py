"""How a read tells a purged job, file or batch from an id that never existed, at the cost of one
primary-key read and without keeping the purged ids.

Ids carry their creation time (``registry.ids``). The purge records, per tenant and kind, the newest
creation time among the ids it deleted (and whether one had no time: an id made before times were
in ids). A read that finds no row asks :func:`expired`: an id created at or before the mark may have
been purged, so it answers 404 ``job_expired`` / ``file_expired`` / ``batch_expired``; a later one
was never there (``*_not_found``). An id never issued whose time reads as old is called expired too:
harmless, it names nothing. The purged rows themselves are never looked up again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from registry import counters, ids
from registry.models import PurgeMark, Tenant


class Kind(StrEnum):
    JOB = "job"
    FILE = "file"
    BATCH = "batch"


@dataclass(frozen=True)
class Mark:
    """What a tenant's purges deleted of one kind: the newest creation time (Unix ms; 0: none with
    a time) and whether an id without a time was deleted."""

    newest_ms: int = 0
    legacy: bool = False


def mark_of(object_ids: Iterable[str]) -> Mark:
    """The mark that covers ``object_ids`` (pure)."""
    newest, legacy = 0, False
    for object_id in object_ids:
        ms = ids.created_ms(object_id)
        if ms is None:
            legacy = True
        else:
            newest = max(newest, ms)
    return Mark(newest_ms=newest, legacy=legacy)


def covers(mark: Mark, object_id: str) -> bool:
    """Whether ``object_id`` may be one the purges behind ``mark`` deleted (pure)."""
    ms = ids.created_ms(object_id)
    return mark.legacy if ms is None else 0 < ms <= mark.newest_ms


def record(session: Session, *, tenant_id: int, kind: Kind, object_ids: Iterable[str]) -> None:
    """Move the tenant's mark past ``object_ids``, deleted in the caller's transaction (an upsert that
    only moves forward, so two purges in any order leave the later mark)."""
    mark = mark_of(object_ids)
    if not mark.newest_ms and not mark.legacy:
        return
    table = counters.table_of(PurgeMark)
    stmt = counters.insert(session, table).values(
        tenant_id=tenant_id, kind=kind.value, newest_ms=mark.newest_ms, legacy=mark.legacy
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "kind"],
            set_={
                "newest_ms": case(
                    (stmt.excluded.newest_ms > table.c.newest_ms, stmt.excluded.newest_ms), else_=table.c.newest_ms
                ),
                "legacy": or_(table.c.legacy, stmt.excluded.legacy),
            },
        )
    )


def expired(session: Session, *, tenant: Tenant, kind: Kind, object_id: str) -> bool:
    """Whether a missing ``object_id`` may have been purged. An admin reads every tenant's rows, so
    its mark is the newest of all (one row per tenant)."""
    if tenant.is_admin:
        newest, legacy = session.execute(
            select(func.max(PurgeMark.newest_ms), func.max(case((PurgeMark.legacy, 1), else_=0))).where(
                PurgeMark.kind == kind.value
            )
        ).one()
        mark = Mark(newest_ms=int(newest or 0), legacy=bool(legacy))
    else:
        row = session.get(PurgeMark, (tenant.id, kind.value))
        mark = Mark(newest_ms=row.newest_ms, legacy=row.legacy) if row is not None else Mark()
    return covers(mark, object_id)
