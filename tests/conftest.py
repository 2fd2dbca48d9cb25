"""Shared pytest configuration; fixtures live in plugin modules under ``tests/fixtures``."""

pytest_plugins = ["tests.fixtures.db", "tests.fixtures.stack"]
