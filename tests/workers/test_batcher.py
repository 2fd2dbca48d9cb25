"""The batcher groups concurrent submissions and resolves every waiter."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from workers.batcher import Batcher


def test_concurrent_submissions_share_one_batch_up_to_max_rows() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def run(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        seen.append(list(items))
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(run, max_rows=4, wait_s=0.5)
    futures = [batcher.submit(i) for i in range(6)]
    gate.set()
    assert [f.result(5) for f in futures] == [0, 10, 20, 30, 40, 50]
    assert [len(b) for b in seen] == [4, 2]
    batcher.close()


def test_a_lone_job_runs_after_the_wait_without_more_arrivals() -> None:
    batcher: Batcher[str, str] = Batcher(lambda items: [s.upper() for s in items], max_rows=8, wait_s=0.01)
    assert batcher.submit("abc").result(5) == "ABC"
    batcher.close()


def test_a_failing_batch_fails_every_waiter_and_the_loop_goes_on() -> None:
    calls = 0

    def run(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return list(items)

    batcher: Batcher[int, int] = Batcher(run, max_rows=1, wait_s=0)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(1).result(5)
    assert batcher.submit(2).result(5) == 2
    batcher.close()


def test_with_two_in_flight_the_next_batch_starts_while_one_still_runs() -> None:
    started = threading.Barrier(2, timeout=5)  # passes only when two batches run at once

    def run(items: Sequence[int]) -> list[int]:
        started.wait()
        return list(items)

    batcher: Batcher[int, int] = Batcher(run, max_rows=2, wait_s=0.05, in_flight=2)
    futures = [batcher.submit(i) for i in range(4)]
    assert [f.result(5) for f in futures] == [0, 1, 2, 3]
    batcher.close()


def test_with_one_in_flight_batches_run_one_after_another() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def run(items: Sequence[int]) -> list[int]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.05)
        with lock:
            running -= 1
        return list(items)

    batcher: Batcher[int, int] = Batcher(run, max_rows=2, wait_s=0.01)
    futures = [batcher.submit(i) for i in range(6)]
    assert [f.result(5) for f in futures] == list(range(6))
    assert most == 1
    batcher.close()
