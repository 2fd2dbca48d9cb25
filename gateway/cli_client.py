"""The CLI's HTTP side: where the gateway is, which key to send, errors as one line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import typer
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console

from registry.settings import default_home

console = Console()
err = Console(stderr=True)


class ClientSettings(BaseSettings):
    """Where the CLI finds the gateway and which key it uses."""

    model_config = SettingsConfigDict(env_prefix="LORAQ_", extra="ignore")

    url: str = Field(default="http://127.0.0.1:8000", description="Gateway base URL for CLI commands.")
    api_key: SecretStr | None = Field(default=None, description="Key the CLI sends; else the admin key.")
    admin_key: SecretStr | None = None
    home: Path = Field(default_factory=default_home)

    def key(self) -> str | None:
        for secret in (self.api_key, self.admin_key):
            if secret is not None:
                return secret.get_secret_value()
        stored = self.home / "admin.key"
        return stored.read_text().strip() if stored.exists() else None


class Client:
    """A thin HTTP client that turns the gateway's JSON errors into CLI messages."""

    def __init__(self, url: str, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30, read=90))

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the gateway at {self.http.base_url}: {exc}. Is `loraq up` running?") from exc
        if resp.status_code >= 400:
            try:
                error = resp.json()["error"]
                raise CliError(f"{error['code']}: {error['message']}")
            except (ValueError, KeyError, TypeError):
                raise CliError(f"HTTP {resp.status_code}: {resp.text[:200]}") from None
        return None if resp.status_code == 204 else resp.json()

    def events(self, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The ``data:`` payloads of a server-sent event stream, as they arrive."""
        try:
            # (connect, read, write, pool) as a plain tuple: a test's TestClient (starlette >= 1.10) is an httpx2
            # client, which refuses httpx's Timeout object but takes the tuple, as httpx does
            with self.http.stream("GET", path, timeout=(30.0, None, 30.0, 30.0), **kwargs) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    try:
                        error = resp.json()["error"]
                    except (ValueError, KeyError, TypeError):
                        raise CliError(f"HTTP {resp.status_code}: {resp.text[:200]}") from None
                    raise CliError(f"{error['code']}: {error['message']}")
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line[len("data: ") :])
        except httpx.HTTPError as exc:
            raise CliError(f"the stream from {self.http.base_url} broke: {exc}") from exc


class CliError(Exception):
    pass


def client() -> Client:
    settings = ClientSettings()
    return Client(settings.url, settings.key())


def run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except CliError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(1) from None
