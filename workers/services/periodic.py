"""Run a service's ``run_once`` every ``interval_s`` on a thread of its own.

Each service used to run inside another's timer tick (the reconciler inside
the heartbeat inside the planner), so one slow Redis scan delayed them all.
A thread each keeps their schedules apart; a failing run is logged and the
next one runs on time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, run_once: Callable[[], object], *, interval_s: float) -> None:
        self.name = name
        self.run_once = run_once
        self.interval_s = interval_s
        self.runs = 0  # completed runs, failed ones included (tests wait on it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"loraq-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def tick(self) -> None:
        """One run; a failure (Redis or the registry briefly away) is logged, never raised."""
        try:
            self.run_once()
        except Exception:
            log.warning("%s failed; retrying in %.1f s", self.name, self.interval_s, exc_info=True)
        finally:
            self.runs += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval_s)
