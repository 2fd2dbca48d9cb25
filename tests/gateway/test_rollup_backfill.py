"""An upgraded registry's history counted online: operators see that it is under way (``/metrics``,
``loraq status``), ``loraq db upgrade`` says so, and ``loraq db backfill`` finishes it by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.cli_status import render
from registry import backfill
from registry.db import make_engine, session_factory, transaction
from registry.settings import DatabaseSettings
from tests.gateway.test_bad_input import make_gateway
from tests.registry.test_rollups import recount, rollup_tables

runner = CliRunner()


def test_a_pending_backfill_is_shown_and_the_cli_completes_it(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAQ_HOME", str(tmp_path))
    monkeypatch.delenv("LORAQ_DATABASE_URL", raising=False)
    engine = make_engine(DatabaseSettings(home=tmp_path).url())
    sessions = session_factory(engine)
    try:
        with make_gateway(tmp_path, redis_url, rollup_backfill=False) as client:
            for i in range(7):
                resp = client.post("/v1/jobs", json={"adapter": "upper", "prompt": f"p{i}", "max_tokens": 4})
                assert resp.status_code == 202, resp.text
            with transaction(sessions) as s:  # as after an upgrade across 0006: nothing counted yet
                backfill.recount(s)
            assert "loraq_rollups_backfill_complete 0.0" in client.get("/metrics").text
            body = client.get("/v1/admin/status").json()
            assert body["rollups"] == {"backfill": "pending", "counted": 0}
            assert "rollups: pending" in str(render(body).renderables[-1])

            upgraded = runner.invoke(app, ["db", "upgrade"])
            assert upgraded.exit_code == 0, upgraded.output
            assert "7 existing jobs are not in the rollups yet" in upgraded.output

            done = runner.invoke(app, ["db", "backfill", "--chunk", "3"])
            assert done.exit_code == 0, done.output
            assert "rollups cover every job (7 counted by the backfill)" in done.output
            metrics = client.get("/metrics").text
            assert "loraq_rollups_backfill_complete 1.0" in metrics
            assert 'loraq_jobs{adapter="upper",status="queued",version="1"} 7.0' in metrics
            assert client.get("/v1/admin/status").json()["rollups"]["backfill"] == "complete"
        with engine.connect() as conn:
            assert rollup_tables(conn) == recount(conn)
    finally:
        engine.dispose()


def test_backfill_refuses_a_chunk_out_of_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAQ_HOME", str(tmp_path))
    result = runner.invoke(app, ["db", "backfill", "--chunk", "0"])
    assert result.exit_code == 2 and "chunk" in result.output
