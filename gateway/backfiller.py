"""The gateway's rollup backfill: counts the jobs a database held before its rollups existed
(``registry.backfill``), in short steps on a thread of its own, while the gateway serves.

It has work only once, after an upgrade across ``0006_rollups``; a database created since is
``complete`` from the start and the thread ends after one read. Every gateway may run it: steps
serialise on the backfill's state row and each continues where the last one stopped.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.orm import Session, sessionmaker

from gateway.loop import Loop
from registry import backfill
from registry.backfill import Progress

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0


class Backfiller(Loop):
    def __init__(
        self, *, sessions: sessionmaker[Session], chunk: int, pause_s: float, interval_s: float = 30.0
    ) -> None:
        super().__init__("rollup-backfill", interval_s=interval_s)
        self.sessions, self.chunk, self.pause_s = sessions, chunk, pause_s
        self._logged = 0.0

    def tick(self) -> Progress:
        done = backfill.run(
            self.sessions,
            chunk=self.chunk,
            pause_s=self.pause_s,
            should_stop=self.stopping.is_set,
            on_step=self._report,
        )
        if done.complete:
            self.stopping.set()  # nothing more to do, ever: the thread ends
        return done

    def _report(self, done: Progress) -> None:
        now = time.monotonic()
        if done.step_rows and now - self._logged >= LOG_EVERY_S:
            self._logged = now
            log.info("rollup backfill: %d existing jobs counted so far", done.counted)
        if done.complete and done.counted:
            log.info("rollup backfill complete: %d existing jobs counted", done.counted)
