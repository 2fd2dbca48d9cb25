"""Per-version statistics of an adapter: what an operator compares during a canary.

Counts and token sums are aggregated in SQL; latency percentiles come from
the most recent finished jobs (``sample`` of them) with a pure function, so
both backends give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from registry.models import Adapter, AdapterVersion, Job
from registry.schemas import JobStatus, LatencyStats, VersionStats

SAMPLE = 10_000  # recent finished jobs per version behind the latency percentiles


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
            Job.version_id,
            Job.status,
            func.count(),
            func.coalesce(func.sum(Job.prompt_tokens), 0),
            func.coalesce(func.sum(Job.completion_tokens), 0),
        )
        .where(Job.adapter_id == adapter.id)
        .group_by(Job.version_id, Job.status)
    ):
        counts.setdefault(version_id, {})[status] = int(n)
        p, c = tokens.get(version_id, (0, 0))
        tokens[version_id] = (p + int(prompt or 0), c + int(completion or 0))
    out = []
    for v in versions:
        recent = session.execute(
            select(Job.run_time_s, Job.queue_wait_s)
            .where(Job.version_id == v.id, Job.run_time_s.is_not(None))
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
    primary = aliased(Job)
    compared, identical = session.execute(
        select(func.count(), func.coalesce(func.sum(case((Job.text == primary.text, 1), else_=0)), 0))
        .select_from(Job)
        .join(primary, primary.id == Job.shadow_of)
        .where(
            Job.version_id == version.id,
            Job.status == JobStatus.SUCCEEDED,
            primary.status == JobStatus.SUCCEEDED,
        )
    ).one()
    compared, identical = int(compared), int(identical or 0)
    return {
        "shadow_compared": compared,
        "shadow_identical_share": round(identical / compared, 4) if compared else None,
    }
