"""The EXPLAIN guard: on PostgreSQL, no hot request and no step of the purge scans the jobs table.

Every statement the gateway sends while it answers ``/metrics``, ``GET /v1/admin/status`` (``loraq
status``), ``GET /v1/usage``, ``POST /v1/jobs`` by a tenant with quotas, ``GET
/v1/adapters/{name}/stats`` and ``GET /v1/jobs/{id}``, and while it purges, is captured as sent
(``before_cursor_execute``) and explained with its parameters, with ``enable_seqscan`` off. Then a
Seq Scan on ``jobs`` in a plan means that no index fits the statement at all (the planner takes a
disabled scan only when nothing else can answer), whatever the table's size and statistics; and an
index read on ``jobs`` whose condition does not bound the index's first column is the same
whole-table read through an index. Either fails the test, naming the request and the statement.
The table holds a few thousand analysed rows so the plans are the ones PostgreSQL chooses on real
data.

That an index fits does not prove the planner takes it at scale (a NOT EXISTS it misjudged once
turned the purge's oldest-jobs read into a whole-table scan with its index in place):
``bench/history.py`` measures the same requests and the purge at a million rows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from registry import backfill, ids
from registry.db import session_factory as make_session_factory
from registry.db import transaction
from registry.models import AdapterVersion, BatchRow, FileRow, Job, Tenant, utcnow
from tests.gateway.test_bad_input import make_gateway

EXPLAINED = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")
ROWS = 4000


@dataclass
class Capture:
    """Statements sent to the database, by the request (label) they were sent for."""

    label: str = "setup"
    sent: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)

    def __call__(
        self, conn: object, cursor: object, statement: str, parameters: Any, context: object, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith(EXPLAINED):
            params = parameters[0] if many and parameters else parameters
            self.sent.setdefault(self.label, []).append((statement, params))


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def scans_of_jobs(engine: Engine, statements: list[tuple[str, Any]]) -> tuple[int, list[str]]:
    """(plans that read or write ``jobs``, the statements among them that read all of it)."""
    touched, whole = 0, []
    with engine.connect() as conn:
        leading = {str(index): str(column) for index, column in conn.execute(LEADING_COLUMNS)}
        conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, params in statements:
            [[explained]] = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params or None).all()
            on_jobs = [
                n
                for n in nodes(explained[0]["Plan"])
                if n.get("Relation Name") == "jobs" or n.get("Index Name") in leading
            ]
            touched += bool(on_jobs)
            if any(_reads_all(n, leading) for n in on_jobs):
                whole.append(statement)
        conn.rollback()
    return touched, whole


LEADING_COLUMNS = text(
    "SELECT i.indexrelid::regclass::text, a.attname FROM pg_index i"
    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
    " WHERE i.indrelid = 'jobs'::regclass"
)


def _reads_all(node: dict[str, Any], leading: dict[str, str]) -> bool:
    """A sequential scan, or an index read whose condition does not bound the index's first column
    (PostgreSQL then walks the whole index)."""
    if node["Node Type"] == "Seq Scan":
        return True
    index = node.get("Index Name")
    if index is None or node["Node Type"] not in ("Index Scan", "Index Only Scan", "Bitmap Index Scan"):
        return False
    return re.search(rf"\b{leading[index]}\b", node.get("Index Cond", "")) is None


def backfill_rollups(engine: Engine) -> None:
    """Count job rows inserted behind the registry's back into the rollups, as an upgraded database's
    backfill does."""
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        backfill.recount(session)
    assert backfill.run(sessions, chunk=10_000).complete


def seed(sessions: sessionmaker[Session], engine: Engine, tenant_name: str) -> str:
    """ROWS jobs of one tenant in every status, half ended before the retention, counted in the
    rollups; a batch whose output expired. Returns an ended job's id."""
    rng, now = random.Random(15), utcnow()
    with sessions() as s, s.begin():
        tenant = s.scalars(select(Tenant).where(Tenant.name == tenant_name)).one()
        version = s.scalars(select(AdapterVersion)).first()
        assert version is not None
        s.add(FileRow(id="file-seed", tenant_id=tenant.id, filename="x", purpose="batch", storage_uri="file:///x"))
        s.flush()
        s.add(
            BatchRow(
                id="batch_seed",
                tenant_id=tenant.id,
                endpoint="/v1/completions",
                status="completed",
                input_file_id="file-seed",
                completed_at=now - timedelta(days=40),
                output_expires_at=now - timedelta(days=1),
            )
        )
        s.flush()
        rows: list[dict[str, Any]] = []
        for i in range(ROWS):
            status = rng.choice(["queued", "running", "succeeded", "succeeded", "failed", "cancelled"])
            created = now - timedelta(days=rng.choice([1, 40]), seconds=rng.randrange(86_400))
            ended = status not in ("queued", "running")
            rows.append(
                {
                    "id": str(ids.uuid7(int(created.timestamp() * 1000))),
                    "tenant_id": tenant.id,
                    "adapter_id": version.adapter_id,
                    "version_id": version.id,
                    "status": status,
                    "priority": 0,
                    "request": {"prompt": "p"},
                    "batch_id": "batch_seed" if i % 50 == 0 and ended else None,
                    "attempts": 1,
                    "worker": "w1" if ended else None,
                    "created_at": created,
                    "finished_at": created + timedelta(seconds=5) if ended else None,
                    "run_time_s": 0.1 if ended else None,
                    "queue_wait_s": 0.1 if ended else None,
                }
            )
        s.execute(insert(Job), rows)
    backfill_rollups(engine)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return next(str(r["id"]) for r in rows if r["status"] == "succeeded" and r["batch_id"] is None)


def test_no_hot_request_and_no_purge_step_scans_the_jobs_table_on_postgresql(
    tmp_path: Path, redis_url: str, postgres_schema_url: str
) -> None:
    with make_gateway(tmp_path, redis_url, database_url=postgres_schema_url, retention_days=30) as admin:
        sessions: sessionmaker[Session] = admin.app.state.sessions  # type: ignore[attr-defined]
        engine = sessions.kw["bind"]
        admin.put("/v1/admin/tenants/busy", json={"max_queued_jobs": 1_000_000, "max_tokens_per_day": 10**12})
        key = admin.post("/v1/admin/keys", json={"tenant": "busy"}).json()["key"]
        old_job = seed(sessions, engine, "busy")
        busy = TestClient(admin.app, headers={"Authorization": f"Bearer {key}"})
        capture = Capture()
        event.listen(engine, "before_cursor_execute", capture)
        requests: dict[str, Callable[[], object]] = {
            "GET /metrics": lambda: admin.get("/metrics"),
            "GET /v1/admin/status": lambda: admin.get("/v1/admin/status"),
            "GET /v1/usage (tenant)": lambda: busy.get("/v1/usage"),
            "GET /v1/usage (admin, 3 days)": lambda: admin.get(
                "/v1/usage", params={"since": (utcnow() - timedelta(days=3)).isoformat()}
            ),
            "POST /v1/jobs with quotas": lambda: busy.post(
                "/v1/jobs", json={"adapter": "upper", "prompt": "hi", "max_tokens": 4}
            ),
            "GET /v1/adapters/upper/stats": lambda: admin.get("/v1/adapters/upper/stats"),
            "GET /v1/jobs/{id}": lambda: busy.get(f"/v1/jobs/{old_job}"),
            "the purge": lambda: admin.app.state.purger.purge.run(),  # type: ignore[attr-defined]
            "GET /v1/jobs/{id} of a purged job": lambda: busy.get(f"/v1/jobs/{old_job}"),
        }
        for label, call in requests.items():
            capture.label = label
            answer = call()
            assert getattr(answer, "status_code", 200) in (200, 202, 404), (label, answer)
        event.remove(engine, "before_cursor_execute", capture)
        assert busy.get(f"/v1/jobs/{old_job}").json()["error"]["code"] == "job_expired"

        found = {label: scans_of_jobs(engine, capture.sent.get(label, [])) for label in requests}

    untouched = [label for label, (touched, _) in found.items() if not touched]
    assert untouched == [], f"nothing read the jobs table for {untouched}: the capture missed them"
    scanning = {label: whole for label, (_, whole) in found.items() if whole}
    assert scanning == {}, f"statements that read the whole jobs table: {scanning}"
