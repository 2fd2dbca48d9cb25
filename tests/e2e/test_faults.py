"""Faults with real processes: a job that kills its worker, and Redis restarted under load.

The promise under test: a job the gateway accepted (2xx) ends exactly once;
a request it cannot record is refused fast with a code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url, select

from gateway.processes import RedisServer, free_port, start_redis
from registry.migrate import upgrade
from registry.models import Job
from tests.fixtures.stack import Pipeline, pipeline
from tests.fixtures.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.e2e]

FAST = {"LORAQ_VISIBILITY_TIMEOUT_S": "5", "LORAQ_RECONCILE_INTERVAL_S": "2"}


def keep_worker_alive(p: Pipeline, name: str, env: dict[str, str]) -> bool:
    """Restart ``name`` if it died; True when it had."""
    if p.stack.procs[name].poll() is None:
        return False
    p.spawn_worker(name, **env)
    return True


def test_a_job_that_kills_its_worker_is_quarantined_and_its_batch_mates_succeed(tmp_path: Path, redis_url: str) -> None:
    env = {**FAST, "LORAQ_FAULT_KILL_MARKER": "__kill_the_worker__", "LORAQ_MAX_ATTEMPTS": "2"}
    with pipeline(tmp_path, redis_url) as p:
        p.register_demo_adapter("upper", "upper")
        p.spawn_worker("w1", **env)
        ids = [p.submit("upper", f"ordinary job {i}", max_tokens=24) for i in range(10)]
        poison = p.submit("upper", "please __kill_the_worker__ now", max_tokens=24)
        ids += [p.submit("upper", f"ordinary job {i}", max_tokens=24) for i in range(10, 20)]
        kills = 0
        deadline = time.monotonic() + 240
        while sum(p.statuses().get(s, 0) for s in ("succeeded", "failed")) < 21:
            assert time.monotonic() < deadline, (p.statuses(), kills)
            kills += keep_worker_alive(p, "w1", env)
            time.sleep(0.3)
        with p.sessions() as s:
            rows = {j.id: j for j in s.scalars(select(Job))}
    assert kills == 2  # two runs of the poison ended the worker; the third was refused
    assert (rows[poison].status, rows[poison].error_code, rows[poison].attempts) == ("failed", "job_quarantined", 3)
    assert all(rows[i].status == "succeeded" for i in ids), {i: rows[i].status for i in ids}
    assert max(rows[i].attempts for i in ids) <= 2  # a mate may have been running at a crash, never quarantined


@contextmanager
def own_redis(data: Path, port: int) -> Iterator[RedisServer]:
    """A Redis on ``port`` keeping its data in ``data``, so a second one there gets it back."""
    server = start_redis(data, port=port, persist=True, log=data / "redis.log")
    try:
        yield server
    finally:
        server.stop()


def test_redis_restarted_under_load_every_accepted_job_ends_once_and_refusals_are_fast(tmp_path: Path) -> None:
    port = free_port()
    data, home = tmp_path / "redis", tmp_path / "stack"
    data.mkdir()
    home.mkdir()
    url = f"redis://127.0.0.1:{port}/0"
    accepted: list[str] = []
    refused: list[float] = []
    with own_redis(data, port) as first, pipeline(home, url) as p:
        p.register_demo_adapter("upper", "upper")
        p.register_demo_adapter("rot13", "rot13")
        p.spawn_worker("w1", **FAST)
        accepted += [p.submit(("upper", "rot13")[i % 2], f"before {i}", max_tokens=24) for i in range(150)]
        assert p.statuses().get("succeeded", 0) < len(accepted)  # under load: jobs still waiting and running
        first.stop()  # a clean stop: AOF on disk
        with httpx.Client(base_url=p.stack.url, headers=p.http.headers, timeout=10) as http:
            for i in range(5):  # while Redis is down: refused fast, nothing recorded
                t0 = time.monotonic()
                resp = http.post("/v1/jobs", json={"adapter": "upper", "prompt": f"during {i}", "max_tokens": 8})
                refused.append(time.monotonic() - t0)
                assert (resp.status_code, resp.json()["error"]["code"]) == (503, "queue_unavailable")
        with own_redis(data, port):
            accepted += [p.submit("upper", f"after {i}", max_tokens=24) for i in range(50)]
            counts = p.wait_terminal(len(accepted), timeout=240)
            with p.sessions() as s:
                rows = {j.id: j for j in s.scalars(select(Job))}
    assert counts == {"succeeded": 200}, counts
    assert set(rows) == set(accepted)  # nothing refused was recorded, nothing accepted was lost
    assert max(refused) < 2.0, refused


def test_database_cut_off_from_the_worker_results_are_recorded_when_it_returns(
    tmp_path: Path, redis_url: str, postgres_schema_url: str
) -> None:
    upgrade(postgres_schema_url)
    proxy_port = free_port()
    proxy = TcpProxy(target=("127.0.0.1", make_url(postgres_schema_url).port or 5432), port=proxy_port)
    proxy.restore()
    through_proxy = make_url(postgres_schema_url).set(port=proxy_port).render_as_string(hide_password=False)
    try:
        with pipeline(tmp_path, redis_url, database_url=postgres_schema_url) as p:
            p.register_demo_adapter("upper", "upper")
            p.spawn_worker("w1", LORAQ_DATABASE_URL=through_proxy, **FAST)
            ids = [p.submit("upper", f"job {i}", max_tokens=24) for i in range(60)]
            deadline = time.monotonic() + 120
            while p.statuses().get("succeeded", 0) < 10:
                assert time.monotonic() < deadline, p.statuses()
                time.sleep(0.1)
            proxy.cut()  # the worker loses its database mid-run
            time.sleep(8)
            during = p.statuses()
            proxy.restore()
            counts = p.wait_terminal(60, timeout=240)
            with p.sessions() as s:
                rows = {j.id: j for j in s.scalars(select(Job))}
        log = (tmp_path / "logs" / "w1.log").read_text(errors="replace")
    finally:
        proxy.cut()
    assert during.get("succeeded", 0) < 60  # the cut came before the end
    assert counts == {"succeeded": 60}, counts
    assert set(rows) == set(ids) and all(rows[i].text for i in ids)
    assert "OperationalError" in log  # the worker felt the outage and retried
