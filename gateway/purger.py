"""The gateway's purge loop: about once a minute, one pass of ``registry.retention``.

A thread of its own beside the batch supervisor, so a long purge (a million rows is a few minutes of
short transactions) never delays a batch's ingest or end, and requests are never made to wait on
it. Every gateway runs the loop; the purge's lease lets one of them work at a time, and a gateway
that dies mid-purge is taken over once its lease runs out.
"""

from __future__ import annotations

import logging
import secrets
import threading

from sqlalchemy.orm import Session, sessionmaker

from registry.retention import Policy, Purge, Purged

log = logging.getLogger(__name__)


class Purger:
    def __init__(self, *, sessions: sessionmaker[Session], policy: Policy, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self.purge = Purge(sessions, policy=policy, owner=f"gw-{secrets.token_hex(6)}", stop=self._stop)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the loop (again, after a stop: an app's lifespan may run more than once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="loraq-purge", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the chunk in flight (its transaction is never cut short)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> Purged:
        purged = self.purge.run()
        if purged.rows or purged.expired_outputs:
            log.info(
                "purged %d jobs, %d batches, %d files, %d webhook deliveries, %d minute buckets; %d batch outputs "
                "expired (%d chunks%s)",
                purged.jobs,
                purged.batches,
                purged.files,
                purged.deliveries,
                purged.minutes,
                purged.expired_outputs,
                purged.chunks,
                "" if purged.finished else ", stopped early",
            )
        return purged

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # a database outage: log, and try again next time
                log.warning("purge pass failed; retrying in %.0fs", self.interval_s, exc_info=True)
