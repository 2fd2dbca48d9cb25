"""Where the registry's database lives.

One settings object per component (docs/architecture.md): this one only knows the
database; the gateway's and the worker's settings embed it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.home() / ".loraq"


class DatabaseSettings(BaseSettings):
    """``LORAQ_HOME`` and ``LORAQ_DATABASE_URL``."""

    model_config = SettingsConfigDict(env_prefix="LORAQ_", extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="State directory (SQLite file, keys, files).",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default a SQLite file loraq.db under LORAQ_HOME.",
    )

    def url(self) -> str:
        """The effective URL: the configured one, else the SQLite file in ``home``."""
        if self.database_url:
            return normalise_url(self.database_url)
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / 'loraq.db'}"


def normalise_url(url: str) -> str:
    """Accept the ``postgresql://`` URLs people paste and use the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
