"""What an operator asks first: which queues wait, how fast they drain, which versions fail.

Plain aggregates over the job table, one query each, for ``loraq status`` and
``GET /v1/admin/status``; Redis's side (messages, heartbeats) is the
gateway's to add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from registry.models import Adapter, AdapterVersion, Job, Route
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
        select(Adapter.name, Job.status, func.count(), func.min(Job.created_at))
        .join(Adapter, Adapter.id == Job.adapter_id)
        .where(Job.status.in_(live))
        .group_by(Adapter.name, Job.status)
    ).all()
    for name, status, count, first in rows:
        q = out.setdefault(name, QueueStatus(adapter=name))
        if status == JobStatus.QUEUED.value:
            q.queued, q.oldest_wait_s = count, max(0.0, (now - _aware(first, now)).total_seconds())
        else:
            q.running = count
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
    ended = session.execute(
        select(
            Job.version_id,
            func.sum(case((Job.status == JobStatus.SUCCEEDED.value, 1), else_=0)),
            func.sum(case((Job.status == JobStatus.FAILED.value, 1), else_=0)),
        )
        .where(Job.finished_at >= now - timedelta(seconds=ERROR_WINDOW_S))
        .group_by(Job.version_id)
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
