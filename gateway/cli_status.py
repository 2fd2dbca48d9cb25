"""``loraq status`` (what is stuck, where, and why, on one screen; ``--watch`` refreshes it) and
``loraq usage`` (the cost report)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from gateway.cli_client import client, console, err, run

STUCK_S = 60.0  # a queue whose oldest job waited this long, with nothing done in a minute, is flagged


def _table(title: str, *columns: str) -> Table:
    return Table(*columns, title=title, title_justify="left")


def render(body: dict[str, Any]) -> Group:
    """The three tables of a status answer (``GET /v1/admin/status``), and the webhook deliveries."""
    hooks = body.get("webhooks", {})
    line = f"webhooks: {hooks.get('pending', 0)} pending, {hooks.get('failed', 0)} failed"
    rollups = body.get("rollups", {})
    if rollups.get("backfill", "complete") != "complete":
        line += (
            f"\nrollups: {rollups['backfill']}, {rollups.get('counted', 0)} existing jobs counted so far "
            "(counts and usage are short until it completes)"
        )
    return Group(_queues(body["queues"]), _workers(body["workers"]), _routes(body["routes"]), line)


def _queues(rows: list[dict[str, Any]]) -> Table:
    table = _table("queues", "queue", "messages", "queued", "running", "oldest wait", "done/min")
    for q in rows:
        stuck = q["queued"] and q["oldest_wait_s"] >= STUCK_S and not q["done_last_min"]
        wait = f"{q['oldest_wait_s']:.0f}s" if q["queued"] else "-"
        counts = (str(q["messages"]), str(q["queued"]), str(q["running"]))
        flagged = f"[red]{wait} STUCK[/red]" if stuck else wait
        table.add_row(f"lora.{q['adapter']}", *counts, flagged, str(q["done_last_min"]))
    return table


def _workers(rows: list[dict[str, Any]]) -> Table:
    table = _table("workers", "worker", "resident adapters", "held msgs", "jobs/min", "tokens/s", "heartbeat")
    for w in rows:
        age = w["heartbeat_age_s"]
        beat = f"[red]{age:.0f}s ago[/red]" if age > 10 else f"{age:.0f}s ago"
        resident = ", ".join(w["resident"]) or "-"
        table.add_row(w["name"], resident, str(w["holding"]), str(w["jobs_last_min"]), f"{w['tokens_per_s']:.1f}", beat)
    if not rows:
        table.add_row("[red]no live worker[/red]", "", "", "", "", "")
    return table


def _routes(rows: list[dict[str, Any]]) -> Table:
    table = _table("routes", "adapter", "version", "weight", "status", "ok 1h", "failed 1h", "error rate")
    for r in rows:
        for v in r["versions"]:
            rate = v["error_rate_1h"]
            shown = f"[red]{rate:.1%}[/red]" if rate > 0.05 else f"{rate:.1%}"
            counts = (str(v["succeeded_1h"]), str(v["failed_1h"]))
            table.add_row(r["adapter"], f"v{v['version']}", f"{v['weight']}%", v["status"], *counts, shown)
    return table


def status(
    watch: Annotated[float, typer.Option(min=0.0, help="Refresh every this many seconds (0: print once).")] = 0.0,
) -> None:
    """Queues (depth, oldest wait, rate), workers (resident adapters, tokens/s, heartbeat) and routes (admin)."""

    def go() -> None:
        http = client()
        if not watch:
            console.print(render(http.call("GET", "/v1/admin/status")))
            return
        try:
            with Live(render(http.call("GET", "/v1/admin/status")), console=console, screen=False) as live:
                while True:
                    time.sleep(watch)
                    live.update(render(http.call("GET", "/v1/admin/status")))
        except KeyboardInterrupt:
            err.print("stopped")

    run(go)


def usage(
    since: Annotated[str | None, typer.Option(help="ISO time (UTC if no zone), inclusive; default 24 h ago.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time, exclusive; default now.")] = None,
    by: Annotated[str, typer.Option(help="Group by a subset of tenant,adapter,version.")] = "tenant,adapter,version",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Tokens and worker-seconds per tenant, adapter and version (yours; all tenants with the admin key)."""

    def go() -> None:
        params = {k: v for k, v in {"since": since, "until": until, "group_by": by}.items() if v}
        rows: list[dict[str, Any]] = client().call("GET", "/v1/usage", params=params)
        if as_json:
            console.print_json(json.dumps(rows))
            return
        groups = [g for g in ("tenant", "adapter", "version") if rows and rows[0].get(g) is not None]
        table = Table(
            *groups, "jobs", "prompt tokens", "completion tokens", "worker-s", title="usage", title_justify="left"
        )
        for r in rows:
            table.add_row(*(str(r[g]) for g in groups), *_numbers(r))
        totals = {k: sum(r[k] for r in rows) for k in ("jobs", "prompt_tokens", "completion_tokens", "worker_seconds")}
        table.add_row(*(["[bold]total[/bold]"] + [""] * (len(groups) - 1) if groups else []), *_numbers(totals))
        console.print(table)

    run(go)


def _numbers(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        f"{row['jobs']:,}",
        f"{row['prompt_tokens']:,}",
        f"{row['completion_tokens']:,}",
        f"{row['worker_seconds']:,.1f}",
    )
