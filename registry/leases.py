"""Named leases: periodic work that one gateway at a time does, whichever gateways run.

A lease is a row (``leases``) taken or renewed by one conditional update: it goes to ``owner`` when
it is free, already ``owner``'s, or past its ``until``. A gateway that dies stops renewing and
another takes over once the lease runs out; one that stalls past it finds its renewal refused and
stops. Both sides of a takeover may run one more step at once, so what a lease guards must be
harmless twice (the purge's deletes are).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from registry import counters
from registry.models import Lease


def claim(session: Session, *, name: str, owner: str, now: datetime, duration: timedelta) -> bool:
    """Take or renew lease ``name`` for ``owner`` until ``now + duration``; False while another holds
    it. The caller commits."""
    counters.ensure(session, Lease, {"name": name})
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name, or_(Lease.owner.is_(None), Lease.owner == owner, Lease.until < now))
        .values(owner=owner, until=now + duration)
        .execution_options(synchronize_session=False)
    )
    return bool(taken.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, *, name: str, owner: str) -> None:
    """Give lease ``name`` up at once if ``owner`` holds it (the next pass of any gateway may take it)."""
    session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == owner)
        .values(owner=None, until=None)
        .execution_options(synchronize_session=False)
    )
