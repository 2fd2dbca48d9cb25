"""What an operator asks first: which queues wait, how fast they drain, which versions fail.

For ``loraq status``, ``GET /v1/admin/status`` and ``/metrics``; Redis's side (messages,
heartbeats) is the gateway's to add. No read grows with the jobs table's history:

- jobs queued and running per adapter: the rollups (``job_counts``), O(groups);
- the oldest queued job per adapter with queued work: one probe of the
  ``(adapter_id, status, created_at)`` index per adapter;
- done in the last minute, per adapter and per worker: the job rows that ended
  in the last minute (the ``finished_at`` index), O(jobs of one minute);
- the last hour's error rates: the rollups' minute buckets plus at most two
  minutes of job rows (``registry.windows``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from registry import windows
from registry.models import Adapter, AdapterVersion, Job, JobCount, Route
from registry.schemas import JobStatus

RATE_WINDOW_S = 60  # "done per minute" and tokens/s look at this much of the past
ERROR_WINDOW_S = 3600  # error rates look at the last hour


@dataclass
class QueueStatus:
    adapter: str
    queued: int = 0
    running: int = 0
    oldest_wait_s: float = 0.0
    done_last_min: int = 0


@dataclass
class VersionHealth:
    version: int
    weight: int
    status: str
    succeeded_1h: int = 0
    failed_1h: int = 0

    @property
    def error_rate(self) -> float:
        ended = self.succeeded_1h + self.failed_1h
        return self.failed_1h / ended if ended else 0.0


@dataclass
class WorkerActivity:
    jobs_last_min: int
    tokens_per_s: float


@dataclass
class RouteStatus:
    adapter: str
    versions: list[VersionHealth] = field(default_factory=list)


def queues(session: Session, *, now: datetime) -> list[QueueStatus]:
    live = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
    out: dict[str, QueueStatus] = {}
    rows = session.execute(
        select(Adapter.name, JobCount.status, func.sum(JobCount.jobs))
        .join(Adapter, Adapter.id == JobCount.adapter_id)
        .where(JobCount.status.in_(live))
        .group_by(Adapter.name, JobCount.status)
        .having(func.sum(JobCount.jobs) > 0)
    ).all()
    for name, status, count in rows:
        q = out.setdefault(name, QueueStatus(adapter=name))
        if status == JobStatus.QUEUED.value:
            q.queued = int(count)
        else:
            q.running = int(count)
    for name, first in _oldest_queued(session, [q.adapter for q in out.values() if q.queued]):
        if first is not None:
            out[name].oldest_wait_s = max(0.0, (now - _aware(first, now)).total_seconds())
    done = session.execute(
        select(Adapter.name, func.count())
        .select_from(Job)
        .join(Adapter, Adapter.id == Job.adapter_id)
        .where(Job.finished_at >= now - timedelta(seconds=RATE_WINDOW_S))
        .group_by(Adapter.name)
    ).all()
    for name, count in done:
        out.setdefault(name, QueueStatus(adapter=name)).done_last_min = count
    return sorted(out.values(), key=lambda q: (-q.oldest_wait_s, q.adapter))


def job_counts() -> Select[str, int, str, int]:
    """Jobs now in the registry by adapter name, version number and status (``/metrics``'
    ``loraq_jobs``), from the rollups: O(groups)."""
    return (
        select(Adapter.name, AdapterVersion.version, JobCount.status, func.sum(JobCount.jobs))
        .join(Adapter, Adapter.id == JobCount.adapter_id)
        .join(AdapterVersion, AdapterVersion.id == JobCount.version_id)
        .group_by(Adapter.name, AdapterVersion.version, JobCount.status)
        .having(func.sum(JobCount.jobs) > 0)
        .order_by(Adapter.name, AdapterVersion.version, JobCount.status)
    )


def _oldest_queued(session: Session, names: list[str]) -> list[tuple[str, datetime | str | None]]:
    """Adapter name -> created_at of its oldest queued job: one index probe per adapter."""
    if not names:
        return []
    first = (
        select(func.min(Job.created_at))
        .where(Job.adapter_id == Adapter.id, Job.status == JobStatus.QUEUED.value)
        .scalar_subquery()
    )
    return [(name, at) for name, at in session.execute(select(Adapter.name, first).where(Adapter.name.in_(names)))]


def workers(session: Session, *, now: datetime) -> dict[str, WorkerActivity]:
    """Worker name (as Celery names it) -> what it finished in the last minute."""
    rows = session.execute(
        select(Job.worker, func.count(), func.coalesce(func.sum(Job.completion_tokens), 0))
        .where(Job.finished_at >= now - timedelta(seconds=RATE_WINDOW_S), Job.worker.is_not(None))
        .group_by(Job.worker)
    ).all()
    return {str(w): WorkerActivity(jobs_last_min=n, tokens_per_s=float(t or 0) / RATE_WINDOW_S) for w, n, t in rows}


def routes(session: Session, *, now: datetime) -> list[RouteStatus]:
    """Every adapter's versions that take traffic or are staged, with the last hour's error rate."""
    weights = {(a, v): w for a, v, w in session.execute(select(Route.adapter_id, Route.version_id, Route.weight)).all()}
    hour = windows.ended(now - timedelta(seconds=ERROR_WINDOW_S), None)
    ended = session.execute(
        select(
            hour.c.version_id,
            func.sum(case((hour.c.status == JobStatus.SUCCEEDED.value, hour.c.jobs), else_=0)),
            func.sum(case((hour.c.status == JobStatus.FAILED.value, hour.c.jobs), else_=0)),
        ).group_by(hour.c.version_id)
    ).all()
    health = {v: (int(ok or 0), int(bad or 0)) for v, ok, bad in ended}
    out: dict[str, RouteStatus] = {}
    for adapter, version in session.execute(
        select(Adapter, AdapterVersion)
        .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
        .where(AdapterVersion.status != "retired")
        .order_by(Adapter.name, AdapterVersion.version)
    ).all():
        ok, bad = health.get(version.id, (0, 0))
        weight = weights.get((adapter.id, version.id), 0)
        out.setdefault(adapter.name, RouteStatus(adapter=adapter.name)).versions.append(
            VersionHealth(version=version.version, weight=weight, status=version.status, succeeded_1h=ok, failed_1h=bad)
        )
    return list(out.values())


def _aware(value: datetime | str, now: datetime) -> datetime:
    """SQLite's MIN() hands back text; PostgreSQL a datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=now.tzinfo)
