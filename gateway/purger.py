"""The gateway's purge loop: about once a minute, one pass of ``registry.retention``.

A thread of its own beside the batch supervisor, so a long purge (a million rows is a few minutes of
short transactions) never delays a batch's ingest or end, and requests are never made to wait on
it. Every gateway runs the loop; the purge's lease lets one of them work at a time, and a gateway
that dies mid-purge is taken over once its lease runs out.
"""

from __future__ import annotations

import logging
import secrets

from sqlalchemy.orm import Session, sessionmaker

from gateway.loop import Loop
from registry.retention import Policy, Purge, Purged

log = logging.getLogger(__name__)


class Purger(Loop):
    def __init__(self, *, sessions: sessionmaker[Session], policy: Policy, interval_s: float) -> None:
        super().__init__("purge", interval_s=interval_s, run_first=False)
        self.purge = Purge(sessions, policy=policy, owner=f"gw-{secrets.token_hex(6)}", stop=self.stopping)

    def tick(self) -> Purged:
        return self.run_once()

    def run_once(self) -> Purged:
        purged = self.purge.run()
        if purged.waiting_for_backfill:
            log.info("purge waits: the rollups are still counting the existing jobs (loraq db backfill)")
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
