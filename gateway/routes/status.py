"""``GET /v1/admin/status``: queues, workers, routes and webhook deliveries in one answer (admin), for
``loraq status``."""

from __future__ import annotations

import time
from typing import Any

import redis
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from gateway.deps import AdminTenant, SessionsDep, SettingsDep
from registry import coverage, status, webhooks
from registry.adapters import active_adapter_names
from registry.models import utcnow
from workers.contract import backlog, heartbeat
from workers.contract.broker import read_states

router = APIRouter(prefix="/v1/admin", tags=["admin"])
STATUS_MAX_QUEUES = 1000  # queues with work read from Redis, longest waiting first


@router.get("/status")
async def fleet_status(_: AdminTenant, sessions: SessionsDep, settings: SettingsDep) -> dict[str, Any]:
    return await run_in_threadpool(_read, sessions, settings.queue.redis_url)


def _read(sessions: SessionsDep, redis_url: str) -> dict[str, Any]:
    now = utcnow()
    with sessions() as session:
        queues = status.queues(session, now=now)
        activity = status.workers(session, now=now)
        routes = status.routes(session, now=now)
        routed = set(active_adapter_names(session))
        hooks = webhooks.backlog(session)
        counted = coverage.read(session)
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
    try:
        indexed = [adapter for adapter, _ in backlog.waiting(client, limit=STATUS_MAX_QUEUES)]
        messages = {s.adapter: s.depth for s in read_states(client, indexed)}
        beats = heartbeat.read_all(client)
    finally:
        client.close()
    adapters = sorted(routed | {q.adapter for q in queues} | set(messages))
    by_name = {q.adapter: q for q in queues}
    return {
        "at": time.time(),
        "queues": [
            {
                "adapter": name,
                "messages": messages.get(name, 0),
                "queued": by_name[name].queued if name in by_name else 0,
                "running": by_name[name].running if name in by_name else 0,
                "oldest_wait_s": round(by_name[name].oldest_wait_s, 1) if name in by_name else 0.0,
                "done_last_min": by_name[name].done_last_min if name in by_name else 0,
            }
            for name in sorted(adapters, key=lambda a: (-(by_name[a].oldest_wait_s if a in by_name else 0), a))
        ],
        "workers": [
            {
                "name": beat.name,
                "resident": beat.resident,
                "holding": beat.holding,
                "loads": beat.loads,
                "heartbeat_age_s": round(beat.age_s(), 1),
                "jobs_last_min": activity[beat.name].jobs_last_min if beat.name in activity else 0,
                "tokens_per_s": round(activity[beat.name].tokens_per_s, 1) if beat.name in activity else 0.0,
                "metrics_port": beat.metrics_port,
            }
            for beat in beats
        ],
        "routes": [
            {
                "adapter": r.adapter,
                "versions": [
                    {
                        "version": v.version,
                        "weight": v.weight,
                        "status": v.status,
                        "succeeded_1h": v.succeeded_1h,
                        "failed_1h": v.failed_1h,
                        "error_rate_1h": round(v.error_rate, 4),
                    }
                    for v in r.versions
                ],
            }
            for r in routes
        ],
        "webhooks": hooks,  # deliveries pending (retries included) and failed
        # after an upgrade across 0006: existing jobs still being counted into the rollups (counts are short)
        "rollups": {"backfill": counted.state, "counted": counted.counted},
    }
