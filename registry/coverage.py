"""Which jobs the rollups cover: a covered job's changes move the rollups and quota counters, an
uncovered one's do not (the backfill counts it as it is when it gets there).

Every job is covered once the backfill is ``complete``, the state of every database created at
this revision or whose history has been counted: then this costs one primary-key read per
transaction. While the backfill runs, a job that a plain read of the state row covers is covered
for good (jobs created since it began, those already counted). For the others the row is read
again under a share lock (``SELECT ... FOR SHARE`` on PostgreSQL; SQLite's write lock serialises
everything anyway) held to the end of the transaction, and a backfill step holds that row's
exclusive lock from before it reads its page until it commits. So a change and a step never
interleave: either the change commits before the step reads the jobs (the step counts the changed
row), or the step commits before the change decides (the row is then covered, and the change adds
its difference to what the step counted). Ids are compared as the database orders ``jobs.id``
(the order the backfill pages in), not looked up in ``jobs``: a change may have deleted its row.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from registry.models import RollupBackfill

STATE_ID = 1
PENDING, RUNNING, COMPLETE = "pending", "running", "complete"


@dataclass(frozen=True)
class State:
    state: str
    high: str | None
    floor: str | None
    counted: int

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE


def read(session: Session, *, share: bool = False) -> State:
    """The backfill's state (a database without the row is treated as complete)."""
    query = select(RollupBackfill.state, RollupBackfill.high, RollupBackfill.floor, RollupBackfill.counted).where(
        RollupBackfill.id == STATE_ID
    )
    if share:
        query = query.with_for_update(read=True)
    row = session.execute(query).first()
    return State(*row) if row is not None else State(COMPLETE, None, None, 0)


def covered(session: Session, job_ids: Collection[str]) -> set[str]:
    """The jobs among ``job_ids`` (rows already written in this transaction) whose changes count."""
    ids = set(job_ids)
    if not ids:
        return ids
    state = read(session)
    if state.complete:
        return ids
    # Covered stays covered (high is fixed, floor only falls), so what this read covers is settled
    # without a lock: jobs created since the backfill began never wait for a step.
    known = _counted(session, ids, high=state.high, floor=state.floor) if state.high is not None else set()
    if known == ids:
        return ids
    state = read(session, share=True)  # held to the commit: no backfill step moves meanwhile
    if state.complete:
        return ids
    if state.state != RUNNING or state.high is None:
        return known
    return known | _counted(session, ids - known, high=state.high, floor=state.floor)


def _counted(session: Session, ids: set[str], *, high: str, floor: str | None) -> set[str]:
    """The ids above ``high`` or at or above ``floor``, in the order the backfill pages ``jobs.id``
    in: the column's collation. Not a lookup in ``jobs``: a change may have deleted the row."""
    if session.get_bind().dialect.name != "postgresql":
        return {i for i in ids if i > high or (floor is not None and i >= floor)}  # SQLite's BINARY: code points
    query = text("SELECT x FROM unnest(CAST(:ids AS varchar[])) AS x WHERE x > :high OR x >= CAST(:floor AS varchar)")
    return set(session.scalars(query, {"ids": sorted(ids), "high": high, "floor": floor}))
