"""Per-version statistics of an adapter: what an operator compares during a canary.

Nothing here grows with the jobs table's history:

- jobs by status and token sums come from the rollups (``job_counts``), O(versions x statuses);
- latency percentiles are exact nearest-rank percentiles of each version's ``SAMPLE`` most recently
  finished jobs, read through the ``(version_id, finished_at)`` index: a bounded query, O(SAMPLE)
  per version, chosen over a fixed-bucket histogram so the figures stay exact and the same on both
  backends (a pure function computes them);
- shadow agreement comes from its counters (``shadow_agreement``, see ``registry.shadows``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.models import Adapter, AdapterVersion, Job, JobCount, ShadowAgreement
from registry.schemas import JobStatus, LatencyStats, VersionStats

# Recent finished jobs per version behind the latency percentiles: what a canary compares is recent
# latency, and p99 of 1,000 is its 10 slowest. 10,000 made a stats read 3-3.6x slower at 1M rows
# than at 40 (bench/history.py), for no figure an operator would read differently.
SAMPLE = 1_000


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of values sorted ascending."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def latency(values: Sequence[float]) -> LatencyStats:
    ordered = sorted(values)
    return LatencyStats(
        p50=round(percentile(ordered, 50), 4),
        p95=round(percentile(ordered, 95), 4),
        p99=round(percentile(ordered, 99), 4),
        samples=len(ordered),
    )


def version_stats(session: Session, adapter: Adapter) -> list[VersionStats]:
    versions = session.scalars(
        select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id).order_by(AdapterVersion.version)
    ).all()
    counts: dict[int, dict[str, int]] = {}
    tokens: dict[int, tuple[int, int]] = {}
    for version_id, status, n, prompt, completion in session.execute(
        select(
            JobCount.version_id,
            JobCount.status,
            func.sum(JobCount.jobs),
            func.coalesce(func.sum(JobCount.prompt_tokens), 0),
            func.coalesce(func.sum(JobCount.completion_tokens), 0),
        )
        .where(JobCount.adapter_id == adapter.id)
        .group_by(JobCount.version_id, JobCount.status)
        .order_by(JobCount.version_id, JobCount.status)
    ):
        if int(n):
            counts.setdefault(version_id, {})[status] = int(n)
        p, c = tokens.get(version_id, (0, 0))
        tokens[version_id] = (p + int(prompt or 0), c + int(completion or 0))
    out = []
    for v in versions:
        recent = session.execute(
            select(Job.run_time_s, Job.queue_wait_s)
            .where(Job.version_id == v.id, Job.finished_at.is_not(None), Job.run_time_s.is_not(None))
            .order_by(Job.finished_at.desc())
            .limit(SAMPLE)
        ).all()
        by_status = counts.get(v.id, {})
        ended = sum(by_status.get(s, 0) for s in (JobStatus.SUCCEEDED, JobStatus.FAILED))
        prompt, completion = tokens.get(v.id, (0, 0))
        out.append(
            VersionStats(
                version=v.version,
                status=v.status,
                jobs=by_status,
                error_rate=round(by_status.get(JobStatus.FAILED, 0) / ended, 4) if ended else 0.0,
                run_time_s=latency([r for r, _ in recent if r is not None]),
                queue_wait_s=latency([w for _, w in recent if w is not None]),
                prompt_tokens=prompt,
                completion_tokens=completion,
                **shadow_agreement(session, v),
            )
        )
    return out


def shadow_agreement(session: Session, version: AdapterVersion) -> dict[str, int | float | None]:
    """How often this version, run as a shadow, answered exactly what the primary answered."""
    row = session.get(ShadowAgreement, version.id)
    compared, identical = (int(row.compared), int(row.identical)) if row is not None else (0, 0)
    return {
        "shadow_compared": compared,
        "shadow_identical_share": round(identical / compared, 4) if compared else None,
    }
