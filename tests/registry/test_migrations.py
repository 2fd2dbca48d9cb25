"""The Alembic migration is the schema: it round-trips and matches the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from registry.db import make_engine
from registry.migrate import downgrade, upgrade
from registry.models import Base

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
