"""``loraq webhooks``: the caller's signing secret, endpoints, a test event, and what was delivered.

Deliveries are listed newest first with their state, so an operator sees at
a glance which receiver refuses or never answers, and why.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from gateway.cli_client import client, console, err, run

app = typer.Typer(help="Signed webhooks: secret, endpoints, test events, deliveries.", no_args_is_help=True)


@app.command("secret")
def secret() -> None:
    """Create (or rotate) the signing secret; it is printed once, store it with your receiver."""

    def go() -> None:
        shown = client().call("POST", "/v1/webhooks/secret")
        console.print(shown["secret"])
        err.print("shown once: your receiver verifies deliveries with it (any Standard Webhooks library).")

    run(go)


@app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="https:// URL of your receiver.")],
    event: Annotated[
        list[str] | None, typer.Option("--event", help="An event type to send (repeat); default all.")
    ] = None,
) -> None:
    """Send this tenant's events to URL."""

    def go() -> None:
        made = client().call("POST", "/v1/webhooks/endpoints", json={"url": url, "event_types": event or []})
        console.print(made["id"])

    run(go)


@app.command("list")
def list_endpoints() -> None:
    """The tenant's endpoints."""

    def go() -> None:
        rows: list[dict[str, Any]] = client().call("GET", "/v1/webhooks/endpoints")
        table = Table("url", "events", "created")
        table.add_column("id", no_wrap=True)  # ids are what `remove` takes: never wrapped
        for row in rows:
            table.add_row(row["url"], ", ".join(row["event_types"]) or "all", row["created_at"][:19], row["id"])
        console.print(table)

    run(go)


@app.command("remove")
def remove(endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (from `loraq webhooks list`).")]) -> None:
    """Stop sending events to an endpoint."""
    run(lambda: client().call("DELETE", f"/v1/webhooks/endpoints/{endpoint_id}"))


@app.command("test")
def test(url: Annotated[str | None, typer.Option(help="Send here instead of to every endpoint.")] = None) -> None:
    """Send a ``webhook.test`` event (signed and retried as any other); prints its delivery ids."""

    def go() -> None:
        for row in client().call("POST", "/v1/webhooks/test", json={"url": url}):
            console.print(f"{row['id']} -> {row['url']}")

    run(go)


@app.command("deliveries")
def deliveries(
    status: Annotated[str | None, typer.Option(help="pending, delivered or failed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """The latest deliveries, newest first, with their last answer."""

    def go() -> None:
        params: dict[str, Any] = {"limit": limit} | ({"status": status} if status else {})
        rows: list[dict[str, Any]] = client().call("GET", "/v1/webhooks/deliveries", params=params)
        table = Table("type", "subject", "attempts", "last answer", "url")
        table.add_column("status", no_wrap=True)
        table.add_column("event", no_wrap=True)
        for row in rows:
            answer = str(row["last_status"] or "") + (f" {row['last_error'][:40]}" if row["last_error"] else "")
            table.add_row(
                row["event_type"], row["subject_id"], str(row["attempts"]), answer, row["url"], row["status"], row["id"]
            )
        console.print(table)

    run(go)
