"""Fixtures shared by the registry tests (defined beside the tests that introduced them)."""

from tests.registry.test_adapters_and_jobs import db, world  # noqa: F401
