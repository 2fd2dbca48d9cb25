"""A gateway background loop: ``tick`` on a thread of its own, every ``interval_s`` or when woken.

The batch supervisor, the webhook dispatcher and the purger are each one of these: restartable
(an app's lifespan may run more than once), stopped at the end of the tick in flight, and a failing
tick (the registry or Redis briefly away) is logged and retried at the next interval.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Loop:
    def __init__(self, name: str, *, interval_s: float, run_first: bool = True) -> None:
        self.name = name
        self.interval_s = interval_s
        self.run_first = run_first  # False: the first tick waits one interval
        self.stopping = threading.Event()  # set by stop(); long ticks check it between pieces of work
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=f"loraq-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Work arrived: tick now rather than at the next interval."""
        self._wake.set()

    def _loop(self) -> None:
        if not self.run_first:
            self._pause()
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception:
                log.warning("%s pass failed; retrying in %.1fs", self.name, self.interval_s, exc_info=True)
            self._pause()

    def _pause(self) -> None:
        self._wake.wait(self.interval_s)
        self._wake.clear()
