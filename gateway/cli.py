"""The ``loraq`` command line: run the stack, register adapters, submit jobs.

Talks to the gateway over HTTP (``LORAQ_URL``) with ``LORAQ_API_KEY``, else
the admin key (``LORAQ_ADMIN_KEY`` or the one ``loraq up`` stored in
``$LORAQ_HOME/admin.key``). ``up`` and ``db`` work on the local machine.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import Progress
from rich.table import Table

from gateway import cli_batches, cli_status, cli_webhooks
from gateway import stack as stack_mod
from gateway.cli_client import Client, ClientSettings, client, console, err, run
from gateway.processes import free_port
from registry.artifacts.checks import file_sha256
from registry.settings import DatabaseSettings
from workers.demo_model import adapter_dir
from workers.demo_model.skills import SKILLS, expected, random_text

app = typer.Typer(help="loraq: many LoRA adapters over one base model, as queued batch work.", no_args_is_help=True)
adapters_app = typer.Typer(help="Register and list adapters.", no_args_is_help=True)
jobs_app = typer.Typer(help="Read jobs.", no_args_is_help=True)
keys_app = typer.Typer(help="Tenant API keys (admin).", no_args_is_help=True)
db_app = typer.Typer(help="The registry database.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and their quotas (admin).", no_args_is_help=True)
routes_app = typer.Typer(help="Canary weights, shadow traffic, promote and rollback (admin).", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
app.add_typer(jobs_app, name="jobs")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(routes_app, name="routes")
app.add_typer(tenants_app, name="tenants")
app.add_typer(cli_batches.app, name="batches")
app.add_typer(cli_webhooks.app, name="webhooks")
app.command("status")(cli_status.status)
app.command("usage")(cli_status.usage)

DEMO_PHRASES = [
    "Hello World",
    "one base many adapters",
    "LoRA skills on a tiny model",
    "Queue per adapter",
    "Celery and Redis",
    "batch jobs at night",
    "Sticky workers swap rarely",
    "every output checked",
]


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    flower_port: Annotated[int, typer.Option(help="Flower port.")] = 5555,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, help="Celery workers to start.")] = 1,
    metrics_port: Annotated[
        int, typer.Option(min=0, max=65535, help="First worker's Prometheus port (the next ones follow); 0: off.")
    ] = 9410,
) -> None:
    """Run the whole stack in the foreground; Ctrl-C stops every process."""
    home = ClientSettings().home
    config = stack_mod.StackConfig(
        home=home, port=port, flower_port=flower_port, host=host, workers=workers, metrics_port=metrics_port or None
    )
    try:
        stack = stack_mod.start(config)
    except RuntimeError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(1) from None
    user = stack.flower_auth.split(":", 1)[0]
    console.print(f"[bold]loraq is up[/bold]\n  gateway  {stack.url}  (OpenAPI at {stack.url}/docs)")
    console.print(f"  flower   {stack.flower_url}  (user {user!r}, password in {home / 'flower.password'})")
    console.print(f"  redis    {redacted(stack.redis_url)}\n  database {redacted(stack.database_url)}")
    console.print(f"  metrics  {stack.url}/metrics" + _worker_metrics(config))
    console.print(f"  admin key in {home / 'admin.key'} (or LORAQ_ADMIN_KEY)\nCtrl-C to stop.")
    stack_mod.serve_forever(stack)


def redacted(url: str) -> str:
    """A URL safe to print: its password replaced (sqlalchemy's rendering, for any scheme)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@", 1)[-1] if "@" in url else url


def _worker_metrics(config: stack_mod.StackConfig) -> str:
    ports = stack_mod.worker_metrics_ports(config)
    return f", workers on {config.host}:{ports[0]}" + (f"-{ports[-1]}" if len(ports) > 1 else "") if ports else ""


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations to LORAQ_DATABASE_URL (or the SQLite file under LORAQ_HOME)."""
    from registry.migrate import upgrade

    url = DatabaseSettings().url()
    upgrade(url)
    console.print(f"database at head: {url}")
    left = _backfill_left(url)
    if left:
        console.print(
            f"{left} existing jobs are not in the rollups yet: the gateways count them in the background "
            "(LORAQ_ROLLUP_BACKFILL), or run `loraq db backfill` once no older gateway or worker runs."
        )


@db_app.command("backfill")
def db_backfill(
    chunk: Annotated[int, typer.Option(min=1, max=50_000, help="Jobs counted per transaction.")] = 1000,
    recount: Annotated[
        bool,
        typer.Option(
            help="Empty the rollups and count every job again: the repair after an older gateway or worker "
            "changed jobs. Counts of jobs already purged are lost."
        ),
    ] = False,
) -> None:
    """Count the jobs the database held before its rollups existed into them (resumable; gateways do the
    same in the background unless LORAQ_ROLLUP_BACKFILL=false)."""
    from registry import backfill
    from registry.db import make_engine, session_factory, transaction

    url = DatabaseSettings().url()
    engine = make_engine(url)
    try:
        sessions = session_factory(engine)
        with transaction(sessions) as session:
            if recount:
                backfill.recount(session)
        with transaction(sessions) as session:
            left = backfill.remaining(session)
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("counting jobs into the rollups", total=left)
            done = backfill.run(sessions, chunk=chunk, on_step=lambda p: progress.advance(task, p.step_rows))
        console.print(f"rollups cover every job ({done.counted} counted by the backfill)")
    finally:
        engine.dispose()


def _backfill_left(url: str) -> int:
    from registry import backfill
    from registry.db import make_engine, session_factory, transaction

    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as session:
            return backfill.remaining(session)
    finally:
        engine.dispose()


@adapters_app.command("add")
def adapters_add(
    name: str,
    path: str,
    private: Annotated[bool, typer.Option(help="Only the owner tenant may use it.")] = False,
    staged: Annotated[bool, typer.Option(help="Record it without traffic; `loraq routes set` activates it.")] = False,
) -> None:
    """Register a new version of NAME from a PEFT LoRA directory (admin)."""
    uri = path if "://" in path else str(Path(path).expanduser().resolve())

    def go() -> None:
        payload = {"name": name, "uri": uri, "public": not private, "staged": staged}
        body = client().call("POST", "/v1/adapters", json=payload)
        latest = body["versions"][-1]
        state = " staged, no traffic yet" if staged else ""
        console.print(
            f"{body['name']} v{latest['version']} registered{state} (r={latest['r']}, sha256 {latest['sha256'][:12]})"
        )

    run(go)


@adapters_app.command("list")
def adapters_list() -> None:
    """Adapters this key may use, with their routes."""

    def go() -> None:
        table = Table("name", "queue", "routes", "versions", "public")
        for a in client().call("GET", "/v1/adapters"):
            routes = ", ".join(f"v{v}={w}%" for v, w in a["routes"].items())
            table.add_row(a["name"], a["queue"], routes, str(len(a["versions"])), "yes" if a["public"] else "no")
        console.print(table)

    run(go)


def _print_route(body: dict[str, Any]) -> None:
    legs = ", ".join(f"v{v}={w}%" for v, w in body["routes"].items())
    shadow = body.get("shadow")
    extra = f"; shadow v{shadow['version']} on {shadow['fraction']:.0%} of jobs" if shadow else ""
    console.print(f"{body['name']}: {legs}{extra}")


def parse_weights(legs: list[str]) -> dict[int, int]:
    """``v1=90 v2=10`` (or ``1=90 2=10``) -> {1: 90, 2: 10}."""
    weights: dict[int, int] = {}
    for leg in legs:
        version, sep, weight = leg.partition("=")
        try:
            weights[int(version.removeprefix("v"))] = int(weight)
        except ValueError:
            raise typer.BadParameter(f"{leg!r}: write VERSION=PERCENT, e.g. v1=90") from None
        if not sep:
            raise typer.BadParameter(f"{leg!r}: write VERSION=PERCENT, e.g. v1=90")
    return weights


def parse_shadow(shadow: str) -> dict[str, Any]:
    """``v3:0.05`` -> {"version": 3, "fraction": 0.05}."""
    version, _, fraction = shadow.partition(":")
    try:
        return {"version": int(version.removeprefix("v")), "fraction": float(fraction)}
    except ValueError:
        raise typer.BadParameter(f"{shadow!r}: write VERSION:FRACTION, e.g. v3:0.05") from None


@routes_app.command("set")
def routes_set(
    name: str,
    legs: Annotated[list[str], typer.Argument(help="VERSION=PERCENT legs summing to 100, e.g. v1=90 v2=10.")],
    shadow: Annotated[str | None, typer.Option(help="VERSION:FRACTION also run in the shadow, e.g. v3:0.05.")] = None,
) -> None:
    """Split NAME's traffic over its versions."""
    body = {"weights": parse_weights(legs), "shadow": parse_shadow(shadow) if shadow else None}
    run(lambda: _print_route(client().call("PUT", f"/v1/adapters/{name}/route", json=body)))


@routes_app.command("promote")
def routes_promote(name: str) -> None:
    """The canary (the newest version with traffic) takes 100 %."""
    run(lambda: _print_route(client().call("POST", f"/v1/adapters/{name}/promote")))


@routes_app.command("rollback")
def routes_rollback(name: str) -> None:
    """Undo the newest route change of NAME."""
    run(lambda: _print_route(client().call("POST", f"/v1/adapters/{name}/rollback")))


@adapters_app.command("show")
def adapters_show(name: str) -> None:
    """NAME's versions: route weight, status, jobs, error rate, run-time percentiles."""

    def go() -> None:
        http = client()
        adapter = next((a for a in http.call("GET", "/v1/adapters") if a["name"] == name), None)
        if adapter is None:
            raise typer.BadParameter(f"no adapter {name!r} visible to this key")
        stats = {s["version"]: s for s in http.call("GET", f"/v1/adapters/{name}/stats")}
        shadow = adapter.get("shadow") or {}
        table = Table("version", "status", "route", "jobs", "errors", "run p50/p95 s", "r", "sha256")
        for v in adapter["versions"]:
            st = stats.get(v["version"], {})
            weight = adapter["routes"].get(str(v["version"]), 0)
            route = f"{weight}%" + (
                f" +shadow {shadow['fraction']:.0%}" if shadow.get("version") == v["version"] else ""
            )
            timing = st.get("run_time_s", {})
            table.add_row(
                f"v{v['version']}",
                v["status"],
                route,
                str(sum(st.get("jobs", {}).values())),
                f"{st.get('error_rate', 0.0):.1%}",
                f"{timing.get('p50', 0):.3f}/{timing.get('p95', 0):.3f}",
                str(v["r"]),
                v["sha256"][:12],
            )
        console.print(table)

    run(go)


@adapters_app.command("retire")
def adapters_retire(name: str, version: int) -> None:
    """Stop serving VERSION of NAME (it must take no traffic; running jobs finish)."""

    def go() -> None:
        client().call("POST", f"/v1/adapters/{name}/versions/{version}/retire")
        console.print(f"{name} v{version} retired")

    run(go)


@app.command()
def submit(
    adapter: str,
    prompt: str,
    wait: Annotated[bool, typer.Option(help="Wait for the result and print it.")] = False,
    max_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.0,
) -> None:
    """Submit one job; prints its id (or its result with --wait)."""

    def go() -> None:
        http = client()
        body = {"adapter": adapter, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        job = http.call("POST", "/v1/jobs", json=body)
        if not wait:
            console.print(job["id"])
            return
        _print_job(_wait_job(http, job["id"], timeout=300))

    run(go)


@jobs_app.command("get")
def jobs_get(job_id: str, wait: Annotated[float, typer.Option(help="Seconds to wait for it to end.")] = 0.0) -> None:
    """Show a job as JSON."""
    run(lambda: _print_job(client().call("GET", f"/v1/jobs/{job_id}", params={"wait": wait})))


@jobs_app.command("watch")
def jobs_watch(
    job_id: str, timeout: Annotated[float, typer.Option(help="Seconds to follow it at most.")] = 600.0
) -> None:
    """Print a job's text as it is generated (jobs submitted with stream: true), then how it ended;
    exits 1 unless it succeeded."""

    def go() -> None:
        ended: dict[str, Any] = {}
        for event in client().events(f"/v1/jobs/{job_id}/stream", params={"timeout": timeout}):
            if event["type"] == "delta":
                console.print(event["text"], end="", highlight=False, markup=False)
            elif event["type"] == "error":
                err.print(f"\n[red]{event['code']}[/red]: {event['message']}")
            elif event["type"] == "end":
                ended = event["job"]
        console.print()
        err.print(f"{job_id}: {ended.get('status', 'unknown')}")
        if ended.get("status") != "succeeded":
            raise typer.Exit(1)

    run(go)


@keys_app.command("create")
def keys_create(tenant: str) -> None:
    """Create TENANT if needed and print a new API key for it (shown once)."""

    def go() -> None:
        body = client().call("POST", "/v1/admin/keys", json={"tenant": tenant})
        console.print(body["key"])

    run(go)


@tenants_app.command("create")
@tenants_app.command("set")
def tenants_set(
    name: str,
    max_queued: Annotated[int | None, typer.Option(min=1, help="Jobs queued or running at once.")] = None,
    max_tokens_per_day: Annotated[
        int | None, typer.Option(min=1, help="Prompt + completion tokens per UTC day.")
    ] = None,
) -> None:
    """Create tenant NAME if needed and set its quotas (an option left out means no limit)."""
    body = {"max_queued_jobs": max_queued, "max_tokens_per_day": max_tokens_per_day}

    def go() -> None:
        t = client().call("PUT", f"/v1/admin/tenants/{name}", json=body)
        limits = [
            f"{t['max_queued_jobs']} live jobs" if t["max_queued_jobs"] else "",
            f"{t['max_tokens_per_day']} tokens/day" if t["max_tokens_per_day"] else "",
        ]
        console.print(f"{t['name']}: " + (", ".join(x for x in limits if x) or "no limits"))

    run(go)


@keys_app.command("revoke")
def keys_revoke(prefix: str) -> None:
    """Revoke a tenant key by its prefix (the first 10 characters); it stops working at once."""

    def go() -> None:
        body = client().call("DELETE", f"/v1/admin/keys/{prefix}")
        console.print(f"revoked {body['revoked']} key(s) starting with {body['prefix']}")

    run(go)


def _print_job(job: dict[str, Any]) -> None:
    console.print_json(json.dumps(job))


def _wait_job(client: Client, job_id: str, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.call("GET", f"/v1/jobs/{job_id}", params={"wait": 30})
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job


def demo_prompts(count: int) -> list[tuple[str, str]]:
    """``count`` (skill, text) pairs, round-robin over the skills, deterministic."""
    rng = random.Random(2026)
    skills = sorted(SKILLS)
    texts = DEMO_PHRASES + [random_text(rng) for _ in range(max(0, count - len(DEMO_PHRASES)))]
    return [(skills[i % len(skills)], texts[i % len(texts)]) for i in range(count)]


def register_demo_skills(client: Client) -> None:
    """Register every shipped skill whose current version is not already the shipped file."""
    known = {a["name"]: {v["sha256"] for v in a["versions"]} for a in client.call("GET", "/v1/adapters")}
    for skill in sorted(SKILLS):
        path = adapter_dir(skill)
        digest = file_sha256(path / "adapter_model.safetensors")
        if digest not in known.get(skill, set()):
            client.call("POST", "/v1/adapters", json={"name": skill, "uri": str(path)})


def run_demo(client: Client, count: int) -> bool:
    register_demo_skills(client)
    pairs = demo_prompts(count)
    ids = [client.call("POST", "/v1/jobs", json={"adapter": s, "prompt": t, "max_tokens": 64})["id"] for s, t in pairs]
    table = Table("input", "adapter", "output", "ok", title=f"loraq demo: {count} jobs over {len(SKILLS)} skills")
    ok = True
    with Progress(console=err, transient=True) as progress:
        done = progress.add_task("waiting for results", total=len(ids))
        finished = []
        for job_id in ids:
            finished.append(_wait_job(client, job_id, timeout=300))
            progress.advance(done)
    for (skill, text), job in zip(pairs, finished, strict=True):
        out = (job.get("result") or {}).get("text")
        good = job["status"] == "succeeded" and out == expected(skill, text)
        ok &= good
        shown = out if out is not None else f"[{job['status']}] {(job.get('error') or {}).get('message', '')}"
        table.add_row(text, f"{skill} v{job['version']}", shown, "[green]✔[/green]" if good else "[red]✘[/red]")
    console.print(table)
    return ok


@app.command()
def demo(count: Annotated[int, typer.Option(min=1, max=10_000, help="Jobs to submit.")] = 24) -> None:
    """Run the main job end to end on the shipped demo model and print input -> adapter -> output -> ✔/✘.

    Uses the stack at LORAQ_URL when one answers; otherwise starts one for the demo and stops it after.
    """
    settings = ClientSettings()
    try:
        if httpx.get(f"{settings.url}/healthz", timeout=1).status_code == 200:
            run(lambda: _exit_on(run_demo(Client(settings.url, settings.key()), count)))
            return
    except httpx.HTTPError:
        pass
    config = stack_mod.StackConfig(
        home=settings.home,
        port=free_port(),
        flower_port=free_port(),
        log_dir=settings.home / "logs",
        metrics_port=free_port(),
    )
    console.print(f"starting a local stack (logs in {config.log_dir}) ...")
    with stack_mod.running(config) as stack:
        stack_mod.wait_for_workers(stack, count=1, timeout=120)
        ok = run_demo(Client(stack.url, stack.admin_key), count)
    _exit_on(ok)


def _exit_on(ok: bool) -> None:
    if not ok:
        err.print("[red]some outputs did not follow their skill's rule[/red]")
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
