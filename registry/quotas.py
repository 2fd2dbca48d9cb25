"""Per-tenant quotas: live jobs at once, and tokens per UTC day.

The decision is a pure function over counts (unit-tested); ``enforce`` reads
the counts for one tenant and is called by the gateway before a job is
written. Tokens are those recorded on the tenant's jobs created since UTC
midnight (prompt + completion); jobs still running count once they end, so a
tenant can go over by what it has running at the moment it reaches the limit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import QuotaExceeded
from registry.keys import ensure_tenant
from registry.models import Job, Tenant, utcnow
from registry.schemas import JobStatus

LIVE_RETRY_AFTER_S = 5  # a queued job usually ends within seconds: try again soon


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def decide(
    *, live: int, max_live: int | None, tokens_today: int, max_tokens: int | None, now: datetime
) -> QuotaExceeded | None:
    """The quota a new job would break, or None."""
    if max_live is not None and live >= max_live:
        return QuotaExceeded(
            f"this tenant has {live} jobs queued or running, its limit; retry when some have ended.",
            retry_after_s=LIVE_RETRY_AFTER_S,
        )
    if max_tokens is not None and tokens_today >= max_tokens:
        midnight = day_start(now) + timedelta(days=1)
        return QuotaExceeded(
            f"this tenant used {tokens_today} tokens today (UTC), its daily limit of {max_tokens}; "
            "retry after midnight UTC.",
            retry_after_s=max(1, int((midnight - now).total_seconds())),
        )
    return None


def enforce(session: Session, *, tenant: Tenant, now: datetime | None = None) -> None:
    """Raise :class:`QuotaExceeded` (HTTP 429 with Retry-After) if the tenant may not add a job now."""
    if tenant.max_queued_jobs is None and tenant.max_tokens_per_day is None:
        return
    now = now or utcnow()
    live = 0
    if tenant.max_queued_jobs is not None:
        live = int(
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.tenant_id == tenant.id,
                    Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                    Job.shadow_of.is_(None),  # shadow copies are the operator's, not the tenant's
                )
            )
            or 0
        )
    tokens = 0
    if tenant.max_tokens_per_day is not None:
        tokens = int(
            session.scalar(
                select(
                    func.coalesce(
                        func.sum(func.coalesce(Job.prompt_tokens, 0) + func.coalesce(Job.completion_tokens, 0)), 0
                    )
                ).where(Job.tenant_id == tenant.id, Job.created_at >= day_start(now))
            )
            or 0
        )
    refused = decide(
        live=live, max_live=tenant.max_queued_jobs, tokens_today=tokens, max_tokens=tenant.max_tokens_per_day, now=now
    )
    if refused is not None:
        raise refused


def set_quotas(session: Session, *, name: str, max_queued_jobs: int | None, max_tokens_per_day: int | None) -> Tenant:
    """Create the tenant if needed and set its quotas (None: no limit)."""
    tenant = ensure_tenant(session, name=name)
    tenant.max_queued_jobs = max_queued_jobs
    tenant.max_tokens_per_day = max_tokens_per_day
    session.flush()
    return tenant
