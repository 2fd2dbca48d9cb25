"""Shadow agreement: how often a version, run as a shadow copy, answered exactly what the primary
job answered, counted once per pair when the second of the two succeeds (``shadow_agreement``).

Whichever of the pair is recorded second does the counting. Both transactions lock the primary row
(the primary's own recording changes it; the shadow's locks it, ``registry.transitions.lock_live``),
so the second waits for the first to commit and then sees it: each pair is counted exactly once.
A pair is its shadow's: while the rollup backfill runs it is counted only if the shadow job is
covered (``registry.coverage``), else by the backfill when it reaches the shadow.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import counters, coverage
from registry.models import Job, ShadowAgreement
from registry.schemas import JobStatus
from registry.transitions import Live

SUCCEEDED = JobStatus.SUCCEEDED.value


def same(a: str | None, b: str | None) -> bool:
    """Equal as SQL compares them (NULL is equal to nothing)."""
    return a is not None and a == b


def count_agreement(session: Session, succeeded: Sequence[tuple[Live, str | None]]) -> None:
    """Count the pairs completed by jobs this transaction just recorded as succeeded (with their text)."""
    pairs: dict[str, tuple[int, bool]] = {}  # shadow id -> (its version, identical)
    shadows = [(job, text) for job, text in succeeded if job.shadow_of is not None]
    if shadows:
        rows = session.execute(
            select(Job.id, Job.text).where(Job.id.in_({job.shadow_of for job, _ in shadows}), Job.status == SUCCEEDED)
        ).all()
        primaries = {job_id: text for job_id, text in rows}
        for job, text in shadows:
            if job.shadow_of in primaries:
                pairs[job.id] = (job.version_id, same(text, primaries[job.shadow_of]))
    texts = {job.id: text for job, text in succeeded if job.shadow_of is None}
    if texts:
        for shadow_id, primary_id, version_id, text in session.execute(
            select(Job.id, Job.shadow_of, Job.version_id, Job.text).where(
                Job.shadow_of.in_(texts), Job.status == SUCCEEDED
            )
        ).all():
            pairs[shadow_id] = (version_id, same(text, texts[str(primary_id)]))
    if pairs:  # a pair belongs to its shadow: counted by the backfill if the shadow is not covered yet
        cover = coverage.covered(session, pairs)
        pairs = {shadow_id: pair for shadow_id, pair in pairs.items() if shadow_id in cover}
    deltas: dict[tuple[int], dict[str, int]] = {}
    for version_id, identical in pairs.values():
        row = deltas.setdefault((version_id,), {"compared": 0, "identical": 0})
        row["compared"] += 1
        row["identical"] += int(identical)
    counters.add(session, ShadowAgreement, deltas, key=("version_id",))
