"""Alembic migrations: the only way loraq's schema changes (``loraq db upgrade``)."""
