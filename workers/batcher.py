"""Gather jobs handed over by concurrent Celery task threads into batches.

Each task thread submits its job and waits on a future; one batching thread
takes the first waiting job, collects others for up to ``wait_s`` or
``max_rows``, runs them together and resolves every future. With
``in_flight`` > 1 the next batch is collected and started while earlier ones
still run (for an engine whose running batch takes rows from several calls:
continuous batching across batches). Torch-free.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[In]], Sequence[Out]],
        *,
        max_rows: int,
        wait_s: float,
        in_flight: int = 1,
        name: str = "loraq-batcher",
    ) -> None:
        self._run_batch = run_batch
        self._max_rows = max_rows
        self._wait_s = wait_s
        self._inbox: queue.Queue[tuple[In, Future[Out]] | None] = queue.Queue()
        self._slots = threading.BoundedSemaphore(in_flight)
        self._runners = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=f"{name}-run")
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: In) -> Future[Out]:
        future: Future[Out] = Future()
        self._inbox.put((item, future))
        return future

    def close(self, timeout: float = 5.0) -> None:
        self._inbox.put(None)
        self._thread.join(timeout)
        self._runners.shutdown(wait=True)

    def _collect(self) -> list[tuple[In, Future[Out]]] | None:
        first = self._inbox.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self._wait_s
        while len(batch) < self._max_rows:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._inbox.get(timeout=remaining) if remaining > 0 else self._inbox.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._inbox.put(None)  # let the loop see the close after this batch
                break
            batch.append(nxt)
        return batch

    def _loop(self) -> None:
        while True:
            self._slots.acquire()  # collect the next batch only when it can start
            batch = self._collect()
            if batch is None:
                self._slots.release()
                return
            self._runners.submit(self._run, batch)

    def _run(self, batch: list[tuple[In, Future[Out]]]) -> None:
        items = [item for item, _ in batch]
        try:
            outputs = self._run_batch(items)
        except BaseException as exc:  # every waiting task must hear about it
            log.exception("batch of %d failed", len(items))
            for _, future in batch:
                future.set_exception(exc)
            return
        finally:
            self._slots.release()
        for (_, future), output in zip(batch, outputs, strict=True):
            future.set_result(output)
