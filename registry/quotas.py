"""Per-tenant quotas by reservation: live jobs at once, and tokens per UTC day.

- **Live jobs**: a tenant's jobs queued or running. Shadow copies are the operator's, not the
  tenant's, and do not count; Batch API lines count while they are live but are never refused.
- **Tokens per day**: a job submitted on a UTC day reserves its prompt tokens (the gateway's count
  with the model's tokenizer, or the prompt's UTF-8 bytes without one) plus its ``max_tokens`` on
  that day. When it ends the reservation is settled to its real prompt + completion tokens; a job
  that failed or was cancelled records none, so its reservation is released. Batch API lines
  reserve nothing and count their real tokens when they end; shadow copies count nothing.

Both are counter rows (``tenant_live_jobs``, ``tenant_day_tokens``), moved with the jobs'
statuses (``registry.transitions``). A submission is admitted by a conditional
``UPDATE ... SET n = n + :k WHERE n <= :limit - :k`` in the transaction that writes the job: one
row, O(1) whatever the history, and the row's lock makes two gateways unable to both take the last
room, so a burst never holds more than the limit. The settled total can pass the limit only by
what the estimate missed (a chat template's few tokens are not in the gateway's count). Lowering a
limit refuses new jobs and leaves accepted ones alone.

The decision and its message are a pure function (``decide``), unit-tested.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry import counters
from registry.errors import QuotaExceeded
from registry.keys import ensure_tenant
from registry.models import Tenant, TenantDayTokens, TenantLiveJobs, utcnow
from registry.rollups import Change
from registry.schemas import JobCreate, JobStatus

LIVE_RETRY_AFTER_S = 5  # a queued job usually ends within seconds: try again soon
_LIVE = frozenset({JobStatus.QUEUED.value, JobStatus.RUNNING.value})


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def decide(
    *,
    live: int,
    max_live: int | None,
    tokens_today: int,
    max_tokens: int | None,
    now: datetime,
    tokens_needed: int = 1,
) -> QuotaExceeded | None:
    """The quota a new job needing ``tokens_needed`` would break, or None."""
    if max_live is not None and live >= max_live:
        return QuotaExceeded(
            f"this tenant has {live} jobs queued or running, its limit; retry when some have ended.",
            retry_after_s=LIVE_RETRY_AFTER_S,
        )
    if max_tokens is not None and tokens_today + tokens_needed > max_tokens:
        midnight = day_start(now) + timedelta(days=1)
        return QuotaExceeded(
            f"this tenant holds {tokens_today} tokens today (UTC) of its daily limit of {max_tokens}, and this "
            f"job needs {tokens_needed} (prompt + max_tokens); retry after midnight UTC or lower max_tokens.",
            retry_after_s=max(1, int((midnight - now).total_seconds())),
        )
    return None


def reservation(request: JobCreate, *, prompt_tokens: int | None) -> int:
    """Tokens a job reserves: its prompt (``prompt_tokens`` as the gateway counted them, else its
    UTF-8 bytes, what a byte-level tokenizer gives, special tokens aside) plus ``max_tokens``."""
    prompt = prompt_tokens if prompt_tokens is not None else len(request.prompt_text().encode())
    return prompt + request.max_tokens


def admit(session: Session, *, tenant: Tenant, change: Change) -> None:
    """Count a new job of ``tenant`` if it fits its quotas, else raise :class:`QuotaExceeded`
    (HTTP 429 with Retry-After); the caller's transaction then rolls the job back."""
    day = change.created_at.date()
    if _take(session, TenantLiveJobs, {"tenant_id": tenant.id}, 1, tenant.max_queued_jobs):
        key = {"tenant_id": tenant.id, "day": day}
        if _take(session, TenantDayTokens, key, change.reserved_tokens, tenant.max_tokens_per_day):
            return
    now = utcnow()
    refused = _refusal(session, tenant=tenant, day=day, needed=change.reserved_tokens, now=now)
    raise refused or QuotaExceeded("this tenant is at a quota; retry shortly.", retry_after_s=LIVE_RETRY_AFTER_S)


def enforce(session: Session, *, tenant: Tenant, now: datetime | None = None) -> None:
    """Raise :class:`QuotaExceeded` if the tenant could not add a job now (reads two counter rows;
    reserves nothing). For requests that create work later, such as a batch."""
    if tenant.max_queued_jobs is None and tenant.max_tokens_per_day is None:
        return
    now = now or utcnow()
    refused = _refusal(session, tenant=tenant, day=now.date(), needed=1, now=now)
    if refused is not None:
        raise refused


def count(session: Session, changes: Iterable[Change]) -> None:
    """Move the counters by jobs that need no admission: bulk lines created, jobs ending (settled
    or released), jobs discarded. Shadow copies are skipped."""
    live: dict[tuple[Any, ...], dict[str, int]] = {}
    tokens: dict[tuple[Any, ...], dict[str, int]] = {}
    for c in changes:
        if c.shadow:
            continue
        step = int(c.new in _LIVE) - int(c.old in _LIVE)
        if step:
            live.setdefault((c.tenant_id,), {"jobs": 0})["jobs"] += step
        held = 0
        if c.old is None:  # created: holds its reservation
            held = c.reserved_tokens
        elif c.old in _LIVE and c.new not in _LIVE:  # ended: its real tokens replace the reservation
            held = c.prompt_tokens + c.completion_tokens - c.reserved_tokens
        if held:
            tokens.setdefault((c.tenant_id, c.created_at.date()), {"tokens": 0})["tokens"] += held
    counters.add(session, TenantLiveJobs, live, key=("tenant_id",))
    counters.add(session, TenantDayTokens, tokens, key=("tenant_id", "day"))


def set_quotas(session: Session, *, name: str, max_queued_jobs: int | None, max_tokens_per_day: int | None) -> Tenant:
    """Create the tenant if needed and set its quotas (None: no limit)."""
    tenant = ensure_tenant(session, name=name)
    tenant.max_queued_jobs = max_queued_jobs
    tenant.max_tokens_per_day = max_tokens_per_day
    session.flush()
    return tenant


def _take(
    session: Session, model: type[TenantLiveJobs | TenantDayTokens], key: dict[str, Any], amount: int, limit: int | None
) -> bool:
    """Add ``amount`` to the counter row at ``key`` unless that passes ``limit``; False when refused.
    The conditional UPDATE holds the row's lock to the end of the transaction."""
    table = counters.table_of(model)
    column = next(c.name for c in table.columns if not c.primary_key)
    if limit is None:
        counters.add(session, model, {tuple(key.values()): {column: amount}}, key=tuple(key))
        return True
    if amount > limit:
        return False
    counters.ensure(session, model, key)
    taken = session.execute(
        update(table)
        .where(*(table.c[k] == v for k, v in key.items()), table.c[column] <= limit - amount)
        .values({column: table.c[column] + amount})
        .returning(table.c[column])
    ).first()
    return taken is not None


def _refusal(session: Session, *, tenant: Tenant, day: date, needed: int, now: datetime) -> QuotaExceeded | None:
    """What ``decide`` says of the tenant's counters for ``day``."""
    live = session.scalar(select(TenantLiveJobs.jobs).where(TenantLiveJobs.tenant_id == tenant.id))
    tokens = session.scalar(
        select(TenantDayTokens.tokens).where(TenantDayTokens.tenant_id == tenant.id, TenantDayTokens.day == day)
    )
    return decide(
        live=int(live or 0),
        max_live=tenant.max_queued_jobs,
        tokens_today=int(tokens or 0),
        max_tokens=tenant.max_tokens_per_day,
        now=now,
        tokens_needed=needed,
    )
