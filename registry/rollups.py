"""Rollups: counters kept beside the jobs table so that what operators and quotas read costs
O(groups), not O(job rows).

- ``job_counts``: jobs now in each status per (tenant, adapter, version), with the tokens recorded
  on them (``/metrics``' ``loraq_jobs``, ``loraq status``' queue counts, the adapter stats);
- ``job_hours`` and ``job_minutes``: jobs that ended per UTC hour and minute (by ``finished_at``),
  per (tenant, adapter, version, terminal status, shadow or not): counts, tokens, worker-seconds and
  latency sums with their counts (usage reports and the last hour's error rates, through
  ``registry.windows``).

They move in the transaction that moves the jobs (``registry.transitions`` builds a :class:`Change`
per job and calls :func:`apply`), as upserts that add (``registry.counters``), so they are exactly
what a recount of the jobs table gives, whoever writes concurrently. A job purged later keeps its
counts: the rollups are the history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from registry import counters
from registry.models import JobCount, JobHour, JobMinute
from registry.schemas import TERMINAL_STATUSES

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COUNT_KEY = ("tenant_id", "adapter_id", "version_id", "status")
BUCKET_KEY = ("bucket", "tenant_id", "adapter_id", "version_id", "status", "shadow")
_ENDED = frozenset(s.value for s in TERMINAL_STATUSES)


@dataclass(frozen=True)
class Change:
    """One job moving from ``old`` to ``new`` status, with what the counters need of it."""

    job_id: str
    tenant_id: int
    adapter_id: int
    version_id: int
    shadow: bool  # a shadow copy (the operator's experiment)
    created_at: datetime
    reserved_tokens: int  # what it holds on its creation day's token quota
    old: str | None  # None: the job was just created
    new: str | None  # None: the job was deleted (never accepted)
    finished_at: datetime | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    worker_seconds: float | None = None
    queue_wait_s: float | None = None
    run_time_s: float | None = None

    @property
    def ended(self) -> bool:
        return self.new in _ENDED and self.finished_at is not None


def floor(moment: datetime, width: timedelta) -> datetime:
    """The start of the UTC bucket of ``width`` holding ``moment`` (exact: timedelta arithmetic)."""
    moment = moment.astimezone(UTC)
    return moment - (moment - EPOCH) % width


def count_deltas(changes: Iterable[Change]) -> dict[tuple[Any, ...], dict[str, int]]:
    """``job_counts`` key -> what to add: one job leaves its old status, joins its new one."""
    out: dict[tuple[Any, ...], dict[str, int]] = {}
    for c in changes:
        for status, step in ((c.old, -1), (c.new, 1)):
            if status is None:
                continue
            row = out.setdefault(
                (c.tenant_id, c.adapter_id, c.version_id, status),
                {"jobs": 0, "prompt_tokens": 0, "completion_tokens": 0},
            )
            row["jobs"] += step
            if step > 0:
                row["prompt_tokens"] += c.prompt_tokens
                row["completion_tokens"] += c.completion_tokens
    return out


def bucket_deltas(changes: Iterable[Change], width: timedelta) -> dict[tuple[Any, ...], dict[str, int | float]]:
    """``job_hours`` / ``job_minutes`` key -> what to add, for the jobs that ended."""
    out: dict[tuple[Any, ...], dict[str, int | float]] = {}
    for c in changes:
        if not c.ended or c.finished_at is None:
            continue
        key = (floor(c.finished_at, width), c.tenant_id, c.adapter_id, c.version_id, c.new, c.shadow)
        row = out.setdefault(key, dict.fromkeys(SUMS, 0))
        row["jobs"] += 1
        row["prompt_tokens"] += c.prompt_tokens
        row["completion_tokens"] += c.completion_tokens
        row["worker_seconds"] += c.worker_seconds or 0.0
        if c.queue_wait_s is not None:
            row["queue_wait_s"] += c.queue_wait_s
            row["queue_waits"] += 1
        if c.run_time_s is not None:
            row["run_time_s"] += c.run_time_s
            row["run_times"] += 1
    return out


SUMS = (
    "jobs",
    "prompt_tokens",
    "completion_tokens",
    "worker_seconds",
    "queue_wait_s",
    "queue_waits",
    "run_time_s",
    "run_times",
)


def apply(session: Session, changes: Iterable[Change]) -> None:
    """Add ``changes`` to the rollups, in the caller's transaction (tables in the order
    ``registry.transitions`` documents)."""
    changes = list(changes)
    if not changes:
        return
    counters.add(session, JobCount, count_deltas(changes), key=COUNT_KEY)
    counters.add(session, JobHour, bucket_deltas(changes, HOUR), key=BUCKET_KEY)
    counters.add(session, JobMinute, bucket_deltas(changes, MINUTE), key=BUCKET_KEY)
