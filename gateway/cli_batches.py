"""``loraq batches``: bulk files through the Batch API, with a live progress bar.

``submit FILE.jsonl --wait`` uploads the file, creates the batch and follows
it until it ends (Ctrl-C stops following, not the batch); ``download`` writes
its output and error files next to each other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.cli_client import Client, CliError, client, console, err, run

app = typer.Typer(help="Bulk files through the OpenAI Batch API: submit, follow, download.", no_args_is_help=True)
ENDED = ("completed", "failed", "expired", "cancelled")
ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


def endpoint_of(path: Path) -> str:
    """The ``url`` of the file's first non-blank line: a batch has one endpoint."""
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    url = json.loads(raw).get("url")
                except (ValueError, AttributeError):
                    break
                if url in ENDPOINTS:
                    return str(url)
                break
    raise CliError(f"cannot tell the endpoint from the first line of {path}; pass --endpoint.")


@app.command("submit")
def submit(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="JSONL, one request per line.")
    ],
    endpoint: Annotated[
        str | None, typer.Option(help="/v1/completions or /v1/chat/completions; default: the file's.")
    ] = None,
    window: Annotated[str, typer.Option(help="Completion window, e.g. 24h.")] = "24h",
    wait: Annotated[bool, typer.Option(help="Follow the batch with a progress bar until it ends.")] = False,
    download: Annotated[Path | None, typer.Option(help="With --wait: write the output and error files here.")] = None,
) -> None:
    """Upload FILE and run it as a batch; prints the batch id (or follows it with --wait)."""

    def go() -> None:
        http = client()
        target = endpoint or endpoint_of(file)
        with file.open("rb") as f:
            uploaded = http.call("POST", "/v1/files", files={"file": (file.name, f)}, data={"purpose": "batch"})
        batch = http.call(
            "POST",
            "/v1/batches",
            json={"input_file_id": uploaded["id"], "endpoint": target, "completion_window": window},
        )
        if not wait:
            console.print(batch["id"])
            return
        err.print(f"batch {batch['id']} ({uploaded['bytes']} bytes, {target})")
        batch = follow(http, batch["id"])
        print_summary(batch)
        if download is not None:
            write_files(http, batch, download)
        if batch["status"] != "completed":
            raise typer.Exit(1)

    run(go)


def follow(http: Client, batch_id: str, *, poll_s: float = 1.0) -> dict[str, Any]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err) as progress:
            bar = progress.add_task("validating", total=None, failed=0)
            while True:
                batch: dict[str, Any] = http.call("GET", f"/v1/batches/{batch_id}")
                counts = batch["request_counts"]
                total = (
                    counts["total"] if batch["status"] not in ("validating", "in_progress") or counts["total"] else None
                )
                done = counts["completed"] + counts["failed"]
                progress.update(bar, description=batch["status"], total=total, completed=done, failed=counts["failed"])
                if batch["status"] in ENDED:
                    return batch
                time.sleep(poll_s)
    except KeyboardInterrupt:
        err.print(f"stopped following; the batch goes on: loraq batches get {batch_id}")
        raise typer.Exit(130) from None


def print_summary(batch: dict[str, Any]) -> None:
    counts = batch["request_counts"]
    console.print(
        f"{batch['id']} {batch['status']}: {counts['completed']} completed, {counts['failed']} failed "
        f"of {counts['total']}; output {batch['output_file_id'] or '-'}, errors {batch['error_file_id'] or '-'}"
    )


def write_files(http: Client, batch: dict[str, Any], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for kind in ("output", "error"):
        file_id = batch[f"{kind}_file_id"]
        if not file_id:
            continue
        dest = into / f"{batch['id']}_{kind}.jsonl"
        with http.http.stream("GET", f"/v1/files/{file_id}/content") as resp, dest.open("wb") as out:
            if resp.status_code != 200:
                raise CliError(f"HTTP {resp.status_code} reading {file_id}")
            for chunk in resp.iter_bytes():
                out.write(chunk)
        console.print(f"{kind}: {dest}")


@app.command("get")
def get(batch_id: str) -> None:
    """Show a batch as JSON."""
    run(lambda: console.print_json(json.dumps(client().call("GET", f"/v1/batches/{batch_id}"))))


@app.command("list")
def list_(limit: Annotated[int, typer.Option(min=1, max=100)] = 20) -> None:
    """The newest batches of this key's tenant."""

    def go() -> None:
        page = client().call("GET", "/v1/batches", params={"limit": limit})
        table = Table("id", "status", "endpoint", "total", "completed", "failed", "created")
        for b in page["data"]:
            c = b["request_counts"]
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(b["created_at"]))
            table.add_row(
                b["id"], b["status"], b["endpoint"], str(c["total"]), str(c["completed"]), str(c["failed"]), created
            )
        console.print(table)

    run(go)


@app.command("cancel")
def cancel(batch_id: str) -> None:
    """Cancel a batch: queued requests never run; the output keeps what completed."""
    run(lambda: console.print(client().call("POST", f"/v1/batches/{batch_id}/cancel")["status"]))


@app.command("download")
def download_(
    batch_id: str, into: Annotated[Path, typer.Option("--dir", help="Where to write them.")] = Path(".")
) -> None:
    """Write a finished batch's output and error files into --dir."""

    def go() -> None:
        http = client()
        batch = http.call("GET", f"/v1/batches/{batch_id}")
        if batch["status"] not in ENDED:
            raise CliError(f"batch {batch_id} is {batch['status']}; its files exist once it ends.")
        write_files(http, batch, into)

    run(go)
