"""Pieces of ``loraq up`` that do not need the whole stack."""

from __future__ import annotations

import socket
import stat
import sys
from pathlib import Path

import pytest

from gateway.processes import free_port
from gateway.stack import StackConfig, secret_file, start


def test_secret_file_is_created_once_private_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAQ_TEST_SECRET", raising=False)
    path = tmp_path / "admin.key"
    first = secret_file(path, env="LORAQ_TEST_SECRET")
    assert len(first) >= 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_file(path, env="LORAQ_TEST_SECRET") == first


def test_secret_from_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAQ_TEST_SECRET", "from-env")
    assert secret_file(tmp_path / "k", env="LORAQ_TEST_SECRET") == "from-env"
    assert not (tmp_path / "k").exists()


def test_up_refuses_a_busy_port_with_the_option_to_change(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} .* in use; choose another with --port"):
            start(StackConfig(home=tmp_path, port=port, flower_port=free_port()))


def test_a_dead_worker_is_restarted_until_it_crash_loops(tmp_path: Path) -> None:
    from gateway.stack import MAX_RESTARTS, Stack, _restart_workers

    stack = Stack(
        config=StackConfig(home=tmp_path, log_dir=tmp_path / "logs"),
        redis_url="redis://unused",
        database_url="sqlite://",
        admin_key="k",
        flower_auth="a:b",
    )
    stack.spawn("worker1", [sys.executable, "-c", "raise SystemExit(3)"])
    restarts = 0
    while True:
        stack.procs["worker1"].wait(10)
        if not _restart_workers(stack):
            break
        restarts += 1
        assert restarts <= MAX_RESTARTS
    assert restarts == MAX_RESTARTS  # then the crash loop is reported instead of hidden
    stack.spawn("gateway", [sys.executable, "-c", "raise SystemExit(1)"])
    stack.procs["gateway"].wait(10)
    stack.restarts.clear()
    assert not _restart_workers(stack)  # anything but a worker dying stops the stack


def test_urls_are_printed_without_their_passwords() -> None:
    from gateway.cli import redacted

    assert redacted("postgresql://loraq:s3cret@db:5432/loraq") == "postgresql://loraq:***@db:5432/loraq"
    assert "pw" not in redacted("redis://:pw@127.0.0.1:6379/0")
