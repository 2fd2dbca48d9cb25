"""The Alembic migration is the schema: it round-trips, matches the models, and leaves existing jobs to
the online rollup backfill."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from registry import backfill, coverage
from registry.adapters import ensure_base_model, resolve
from registry.db import make_engine, transaction
from registry.db import session_factory as make_session_factory
from registry.jobs import create_job, new_job_id
from registry.keys import ensure_tenant
from registry.migrate import downgrade, upgrade
from registry.models import AdapterVersion, Base, BatchRow, FileRow, UTCDateTime, utcnow
from registry.schemas import JobCreate
from tests.registry.test_adapters_and_jobs import World, register
from tests.registry.test_retention import ended_batch
from tests.registry.test_rollups import recount, rollup_tables

MODEL_TABLES = set(Base.metadata.tables)


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trips(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    assert table_names(empty_db_url) == MODEL_TABLES | {"alembic_version"}

    downgrade(empty_db_url)
    assert table_names(empty_db_url) == {"alembic_version"}

    upgrade(empty_db_url)
    assert table_names(empty_db_url) == MODEL_TABLES | {"alembic_version"}


def test_upgrade_twice_is_a_no_op(db_url: str) -> None:
    upgrade(db_url)
    assert table_names(db_url) == MODEL_TABLES | {"alembic_version"}


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def _jobs_at_0005(
    world: World, upper: AdapterVersion, rot13: AdapterVersion, *, n: int, seed: int
) -> list[dict[str, Any]]:
    """Job rows as revision 0005 holds them: every status, shadows, results over a few hours."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        status = rng.choice(["queued", "running", "succeeded", "succeeded", "failed", "cancelled"])
        version = rng.choice([upper, rot13])
        primary = rng.choice(rows) if rows and rng.random() < 0.3 else None
        created = utcnow() - timedelta(days=rng.randrange(3), minutes=rng.randrange(600))
        ended = status in ("succeeded", "failed", "cancelled")
        ran = status in ("succeeded", "failed")
        text = rng.choice(["SAME", "OTHER"]) if status == "succeeded" else None
        rows.append(
            {
                "id": f"job-{i:04d}",
                "tenant_id": rng.choice([world.acme, world.globex]).id,
                "adapter_id": version.adapter_id,
                "version_id": version.id,
                "status": status,
                "priority": 0,
                "request": {"adapter": "x", "prompt": "p"},
                "shadow_of": primary["id"] if primary else None,
                "text": text,
                "prompt_tokens": rng.randrange(1, 20) if text else None,
                "completion_tokens": rng.randrange(1, 20) if text else None,
                "queue_wait_s": rng.random() if ran else None,
                "run_time_s": rng.random() if ran else None,
                "worker_seconds": rng.choice([None, rng.random()]) if ran else None,
                "attempts": 1,
                "created_at": created,
                "finished_at": created + timedelta(seconds=rng.randrange(7200)) if ended else None,
            }
        )
    return rows


def _registry_at_0005(url: str, engine: Engine, n: int) -> None:
    upgrade(url, "0005")
    with transaction(make_session_factory(engine)) as s:
        world = World(
            admin=ensure_tenant(s, name="ops", is_admin=True),
            acme=ensure_tenant(s, name="acme"),
            globex=ensure_tenant(s, name="globex"),
            base=ensure_base_model(s, name="loraq/demo-base", path="/srv/models/demo-base"),
        )
        upper, rot13 = register(s, world, "upper"), register(s, world, "rot13")
    rows = _jobs_at_0005(world, upper, rot13, n=n, seed=5)
    with engine.begin() as conn:
        conn.execute(JOBS_AT_0005.insert(), rows)


def test_the_upgrade_leaves_existing_jobs_to_a_backfill_that_then_equals_a_recount(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        _registry_at_0005(empty_db_url, engine, n=60)
        upgrade(empty_db_url)
        sessions = make_session_factory(engine)
        with engine.connect() as conn:
            assert not any(rollup_tables(conn).values())  # the upgrade counted nothing: it does not grow with jobs
        with transaction(sessions) as s:
            assert coverage.read(s).state == coverage.PENDING and backfill.remaining(s) == 60
        assert backfill.run(sessions, chunk=7).complete  # many pages; shadows and primaries in different ones
        with engine.connect() as conn:
            counted = rollup_tables(conn)
            assert counted == recount(conn)
        assert counted["job_hours"] and counted["shadow_agreement"] and counted["tenant_live_jobs"]
    finally:
        engine.dispose()


def test_a_database_without_jobs_or_already_counted_needs_no_backfill(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    sessions = make_session_factory(engine)
    try:
        with transaction(sessions) as s:
            assert coverage.read(s).complete  # no jobs
        with transaction(sessions) as s:  # jobs counted as they were made (0006 as first released counted them)
            world = World(
                admin=ensure_tenant(s, name="ops", is_admin=True),
                acme=ensure_tenant(s, name="acme"),
                globex=ensure_tenant(s, name="globex"),
                base=ensure_base_model(s, name="loraq/demo-base", path="/srv/models/demo-base"),
            )
            register(s, world, "upper")
            resolved = resolve(s, tenant=world.acme, name="upper", routing_key="k")
            request = JobCreate(adapter="upper", prompt="hi", max_tokens=2)
            create_job(s, tenant=world.acme, request=request, resolved=resolved, job_id=new_job_id())
        downgrade(empty_db_url, "0008_retention")
        upgrade(empty_db_url)
        with transaction(sessions) as s:
            assert coverage.read(s).complete
    finally:
        engine.dispose()


def test_the_file_expiry_migration_gives_the_outputs_of_ended_batches_their_batchs_expiry(
    db_url: str, session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    done = ended_batch(session_factory, world, tmp_path, output_expires_s=3600)
    downgrade(db_url, "0009_rollup_backfill")
    upgrade(db_url)
    with session_factory() as s:
        batch = s.get(BatchRow, done.id)
        assert batch is not None and batch.output_expires_at is not None
        owned = {f: s.get(FileRow, f) for f in (batch.output_file_id, batch.error_file_id, batch.input_file_id) if f}
        assert {f: row.expires_at if row else "gone" for f, row in owned.items()} == {
            batch.output_file_id: batch.output_expires_at,
            batch.error_file_id: batch.output_expires_at,
            batch.input_file_id: None,  # an input has no such expiry
        }


JOBS_AT_0005 = sa.table(
    "jobs",
    *(sa.column(c) for c in ("id", "tenant_id", "adapter_id", "version_id", "status", "priority", "shadow_of")),
    *(sa.column(c) for c in ("text", "prompt_tokens", "completion_tokens", "attempts")),
    *(sa.column(c) for c in ("queue_wait_s", "run_time_s", "worker_seconds")),
    sa.column("request", sa.JSON()),
    sa.column("created_at", UTCDateTime()),
    sa.column("finished_at", UTCDateTime()),
)
