"""Cost report: tokens and worker-seconds per tenant, adapter and version over a time range.

Counts jobs that ended (succeeded or failed) in ``[since, until)``, by when
they finished; cancelled jobs cost nothing recorded. Worker-seconds are each
job's share of its batch's time (split by tokens when it ran), so they add up
to the time workers spent in batches. Shadow copies are the operator's
experiment and are left out. A tenant sees its own rows; an admin sees all.

Read from the rollups (``registry.windows``: whole hours and minutes from
``job_hours`` / ``job_minutes``, at most two minutes of job rows), so a report
costs O(groups x hours in the range), not O(jobs), and sums what a scan did.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from pydantic import BaseModel
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from registry import windows
from registry.errors import InvalidRequest
from registry.models import Adapter, AdapterVersion, Tenant
from registry.schemas import JobStatus

GROUPS = ("tenant", "adapter", "version")


class UsageRow(BaseModel):
    tenant: str | None = None
    adapter: str | None = None
    version: int | None = None
    jobs: int
    prompt_tokens: int
    completion_tokens: int
    worker_seconds: float


def parse_groups(value: str) -> list[str]:
    groups = [g.strip() for g in value.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise InvalidRequest(
            f"group_by {value!r}: give a comma-separated subset of {', '.join(GROUPS)}.", code="invalid_group_by"
        )
    if "version" in groups and "adapter" not in groups:
        groups.append("adapter")  # a version number means nothing without its adapter
    return [g for g in GROUPS if g in groups]


def report(
    session: Session, *, tenant: Tenant, since: datetime, until: datetime, group_by: Sequence[str]
) -> list[UsageRow]:
    if until <= since:
        raise InvalidRequest("until must be after since.", code="invalid_time_range")
    columns: dict[str, ColumnElement[object]] = {
        "tenant": Tenant.name,  # type: ignore[dict-item]
        "adapter": Adapter.name,  # type: ignore[dict-item]
        "version": AdapterVersion.version,  # type: ignore[dict-item]
    }
    keys = [columns[g] for g in group_by]
    ended = windows.ended(since, until)
    query = (
        select(
            *keys,
            func.sum(ended.c.jobs),
            func.coalesce(func.sum(ended.c.prompt_tokens), 0),
            func.coalesce(func.sum(ended.c.completion_tokens), 0),
            func.coalesce(func.sum(ended.c.worker_seconds), 0.0),
        )
        .select_from(ended)
        .join(Tenant, Tenant.id == ended.c.tenant_id)
        .join(Adapter, Adapter.id == ended.c.adapter_id)
        .join(AdapterVersion, AdapterVersion.id == ended.c.version_id)
        .where(
            ended.c.status.in_([JobStatus.SUCCEEDED.value, JobStatus.FAILED.value]),
            ended.c.shadow.is_(False),
        )
        .group_by(*keys)
        .order_by(*keys)
    )
    if not tenant.is_admin:
        query = query.where(ended.c.tenant_id == tenant.id)
    out = []
    for row in session.execute(query).all():
        named = dict(zip(group_by, row[: len(keys)], strict=True))
        jobs, prompt, completion, seconds = (cast(float, v) for v in row[len(keys) :])
        out.append(
            UsageRow(
                **named,
                jobs=int(jobs),
                prompt_tokens=int(prompt),
                completion_tokens=int(completion),
                worker_seconds=round(float(seconds), 4),
            )
        )
    return out
