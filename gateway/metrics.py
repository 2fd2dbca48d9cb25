"""The gateway's ``/metrics``: the fleet as the registry and Redis see it, and the gateway's HTTP.

The fleet's figures are read when Prometheus scrapes (a custom collector), so
every gateway replica reports the same truth and nothing drifts: jobs by
adapter, version and status (the registry's rollups, O(groups) whatever the
history); each adapter queue's messages and the age of its oldest queued job;
batches by status; live workers and their heartbeat age. HTTP requests are
counted by route template (``/v1/jobs/{job_id}``), never by raw path, so job
ids never become labels. A registry or Redis that does not answer is reported
as ``loraq_up{dependency} 0``, not as a failed scrape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator

import redis
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry import coverage, status, webhooks
from registry.models import BatchRow, utcnow
from workers.contract import backlog, heartbeat
from workers.contract.broker import read_states

log = logging.getLogger(__name__)

METRICS_MAX_QUEUES = 1000  # queues with work listed per scrape, longest waiting first (the rest: loraq_backlog_queues)


def _gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class FleetCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session], client: redis.Redis) -> None:
        self.sessions = sessions
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = _gauge("loraq_up", "Whether the gateway reached this dependency while scraping.", "dependency")
        try:
            families = self._registry()
            yield from families
            up.add_metric(["database"], 1)
        except Exception:
            log.warning("metrics: the registry did not answer", exc_info=True)
            up.add_metric(["database"], 0)
        try:
            yield from self._redis()
            up.add_metric(["redis"], 1)
        except Exception:
            log.warning("metrics: Redis did not answer", exc_info=True)
            up.add_metric(["redis"], 0)
        yield up

    def _registry(self) -> list[GaugeMetricFamily]:
        jobs = _gauge(
            "loraq_jobs", "Jobs in the registry by adapter, version and status.", "adapter", "version", "status"
        )
        oldest = _gauge("loraq_queue_oldest_job_age_seconds", "Age of the adapter's oldest queued job.", "adapter")
        batches = _gauge("loraq_batches", "Batch API batches by status.", "status")
        hooks = _gauge(
            "loraq_webhook_deliveries", "Webhook deliveries pending (retries included) and failed.", "status"
        )
        backfill = _gauge(
            "loraq_rollups_backfill_complete",
            "0 while the jobs held before an upgrade across 0006 are still being counted into the rollups "
            "(job counts and usage are short until then), else 1.",
        )
        with self.sessions() as session:
            backfill.add_metric([], int(coverage.read(session).complete))
            for state, count in webhooks.backlog(session).items():
                hooks.add_metric([state], count)
            for name, version, state, count in session.execute(status.job_counts()).all():
                jobs.add_metric([name, str(version), state], int(count))
            for queue in status.queues(session, now=utcnow()):
                if queue.queued:
                    oldest.add_metric([queue.adapter], queue.oldest_wait_s)
            for state, count in session.execute(select(BatchRow.status, func.count()).group_by(BatchRow.status)):
                batches.add_metric([state], count)
        return [jobs, oldest, batches, hooks, backfill]

    def _redis(self) -> list[GaugeMetricFamily]:
        messages = _gauge(
            "loraq_queue_messages",
            "Messages in the adapter's Redis queue (a bulk chunk is one); queues with work only.",
            "adapter",
        )
        waiting = _gauge("loraq_backlog_queues", "Adapter queues with waiting work (the backlog index).")
        waiting.add_metric([], backlog.size(self.client))
        indexed = [adapter for adapter, _ in backlog.waiting(self.client, limit=METRICS_MAX_QUEUES)]
        for state in read_states(self.client, indexed):
            messages.add_metric([state.adapter], state.depth)
        workers = _gauge("loraq_workers", "Workers whose heartbeat is live.")
        age = _gauge("loraq_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.", "worker")
        resident = _gauge("loraq_worker_resident_adapter_count", "Adapters in the worker's slots.", "worker")
        records = heartbeat.read_all(self.client)
        workers.add_metric([], len(records))
        for record in records:
            age.add_metric([record.name], record.age_s())
            resident.add_metric([record.name], len(record.resident))
        return [messages, waiting, workers, age, resident]


def install(app: FastAPI, *, sessions: sessionmaker[Session], redis_url: str) -> None:
    """``GET /metrics`` and the HTTP middleware, on a registry of the app's own."""
    registry = CollectorRegistry()
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
    registry.register(FleetCollector(sessions, client))
    requests = Counter(
        "loraq_http_requests",
        "HTTP requests by route template, method and status.",
        ["route", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        "loraq_http_request_seconds",
        "HTTP request latency by route template.",
        ["route"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    )

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests.labels(route, request.method, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
