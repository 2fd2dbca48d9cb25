"""Jobs that ended in a time window ``[since, until)``, summed from the rollups, exactly.

A window is cut into whole UTC hours (``job_hours``), whole minutes at its edges (``job_minutes``)
and what is left of its first and last minute, read from the job rows through their
``finished_at`` index. So a window costs O(groups x (hours + 118 minutes)) rollup rows plus the
jobs of at most two minutes, never its whole history, and gives what a scan of the jobs table gave.
Past the retention (``registry.retention``) minute buckets and job rows are purged, so there a
window counts its whole hours only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    Subquery,
    and_,
    cast,
    false,
    func,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import InstrumentedAttribute

from registry.models import EndedBucket, Job, JobHour, JobMinute
from registry.rollups import HOUR, MINUTE, floor

Span = tuple[datetime, datetime | None]  # [start, end); None: no end
# tenant_id, adapter_id, version_id, status, shadow, jobs, prompt_tokens, completion_tokens, worker_seconds
EndedRows = Select[int, int, int, str, bool, int, int, int, float]


@dataclass(frozen=True)
class Spans:
    """``[since, until)`` as disjoint pieces: whole hours, whole minutes, and the rest (job rows)."""

    hours: Sequence[Span] = ()
    minutes: Sequence[Span] = ()
    rows: Sequence[Span] = ()


def _ceil(moment: datetime, width: timedelta) -> datetime:
    start = floor(moment, width)
    return start if start == moment else start + width


def _nonempty(*pieces: Span) -> list[Span]:
    return [(start, end) for start, end in pieces if end is None or start < end]


def split(since: datetime, until: datetime | None) -> Spans:
    """Cut ``[since, until)`` (``until`` None: no end) so each piece is read where it is cheapest (pure)."""
    first_min = _ceil(since, MINUTE)
    if until is None:
        return Spans(minutes=[(first_min, None)], rows=_nonempty((since, first_min)))
    if until <= since:
        return Spans()
    last_min = floor(until, MINUTE)
    if first_min >= last_min:
        return Spans(rows=[(since, until)])
    rows = _nonempty((since, first_min), (last_min, until))
    first_hour, last_hour = _ceil(first_min, HOUR), floor(last_min, HOUR)
    if first_hour >= last_hour:
        return Spans(minutes=[(first_min, last_min)], rows=rows)
    minutes = _nonempty((first_min, first_hour), (last_hour, last_min))
    return Spans(hours=[(first_hour, last_hour)], minutes=minutes, rows=rows)


def ended(since: datetime, until: datetime | None) -> Subquery:
    """The jobs that ended in ``[since, until)`` (``until`` None: since ``since``) as rows of
    (tenant_id, adapter_id, version_id, status, shadow, jobs, prompt_tokens, completion_tokens,
    worker_seconds): group and filter them as if they were job rows, summing ``jobs`` where a scan
    would count."""
    spans = split(since, until)
    parts = [
        _buckets(model, pieces) for model, pieces in ((JobHour, spans.hours), (JobMinute, spans.minutes)) if pieces
    ]
    if spans.rows or not parts:
        parts.append(_rows(spans.rows))
    return union_all(*parts).subquery("ended")


def _buckets(model: type[EndedBucket], pieces: Sequence[Span]) -> EndedRows:
    return select(
        model.tenant_id,
        model.adapter_id,
        model.version_id,
        model.status,
        model.shadow,
        model.jobs,
        model.prompt_tokens,
        model.completion_tokens,
        model.worker_seconds,
    ).where(_within(model.bucket, pieces))


def _rows(pieces: Sequence[Span]) -> EndedRows:
    rows = select(
        Job.tenant_id,
        Job.adapter_id,
        Job.version_id,
        Job.status,
        Job.shadow_of.is_not(None).label("shadow"),
        literal_column("1").label("jobs"),
        func.coalesce(Job.prompt_tokens, 0).label("prompt_tokens"),
        func.coalesce(Job.completion_tokens, 0).label("completion_tokens"),
        cast(func.coalesce(Job.worker_seconds, 0.0), Float).label("worker_seconds"),
    )
    # A caller's tenant filter reaches this part: (tenant_id, finished_at) is indexed for it, so the
    # rows read stay those of the edges, not the tenant's history.
    return rows.where(_within(Job.finished_at, pieces) if pieces else false())


def _within(
    column: InstrumentedAttribute[datetime] | InstrumentedAttribute[datetime | None], pieces: Sequence[Span]
) -> ColumnElement[bool]:
    return or_(*(column >= start if end is None else and_(column >= start, column < end) for start, end in pieces))
