"""The gateway's batch loop: ingest new batches, count progress, end finished ones.

One thread per gateway process. Several gateways may run it at once: ingest
is guarded by a lease and by the read offset (``registry.batches``), and a
batch is finished under a row lock by whoever gets there first. A gateway
that restarts picks up where any other left off.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from gateway.batch_ingest import Ingester
from gateway.limits import ModelLimits
from gateway.loop import Loop
from gateway.settings import GatewaySettings
from registry import batches, webhooks
from registry.batch_output import finalize
from registry.models import BatchRow, utcnow
from workers.contract.messages import Publisher

log = logging.getLogger(__name__)


class BatchSupervisor(Loop):
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        settings: GatewaySettings,
        limits: ModelLimits,
    ) -> None:
        super().__init__("batches", interval_s=settings.batch_poll_s)
        self.sessions = sessions
        self.settings = settings
        self.on_event: Callable[[], None] | None = None  # told when a batch's end recorded webhook deliveries
        self.owner = f"gw-{secrets.token_hex(6)}"
        self.ingester = Ingester(
            sessions=sessions, publisher=publisher, settings=settings, limits=limits, owner=self.owner
        )

    def tick(self) -> None:
        """One pass over every unfinished batch."""
        with self.sessions() as session:
            ingest = batches.to_ingest(session)
        for batch_id in ingest:
            if self.stopping.is_set():
                return
            self.ingester.run(batch_id)
        with self.sessions() as session:
            watch = batches.to_watch(session)
        for batch_id in watch:
            self.settle(batch_id)

    def settle(self, batch_id: str) -> None:
        """Update the batch's counts; once its file is read and no job is live, write its files and end it."""
        with self.sessions() as session, session.begin():
            batch = session.get(BatchRow, batch_id, with_for_update=True, populate_existing=True)
            if batch is None or batch.status not in batches.DRAINING:
                return
            seen = batches.record_progress(session, batch=batch, now=utcnow())
            if not batch.ingest_done or seen.live:
                return
            finalize(session, batch=batch, files_dir=self.settings.files_path(), max_bytes=self.settings.max_file_bytes)
            hooks = webhooks.batch_ended(
                session,
                batch_id=batch.id,
                tenant_id=batch.tenant_id,
                status=batch.status,
                own_url=(batch.metadata_ or {}).get(webhooks.METADATA_KEY),
            )
            log.info("batch %s %s: %d completed, %d failed", batch_id, batch.status, batch.completed, batch.failed)
        if hooks and self.on_event is not None:
            self.on_event()
