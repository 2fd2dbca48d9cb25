"""Relaying a streamed job's text from its Redis stream, ending with what the registry recorded.

The worker's deltas are a preview; the recorded result is the answer. The
relay sends each delta's text past what it already sent (a re-run starts
again at character 0: what it repeats is skipped), stops relaying at a gap
(entries trimmed away, or dropped while Redis was unreachable) or at a
re-run that disagrees with what was sent, and always ends with the recorded
outcome: the rest of the recorded text when what was sent is its beginning,
else nothing to complete it with (the caller sends an error). A stream that
breaks (Redis down, the worker killed and the job run again) therefore ends
complete or with an error, never cut short silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from anyio import CancelScope

from gateway.job_events import JobEvents
from registry.models import Tenant
from registry.schemas import JobView
from workers.contract import streams

log = logging.getLogger(__name__)

STREAM_BLOCK_MS = 1000  # one XREAD waits this long at most; then the relay checks whether the job ended unmarked


@dataclass
class Relay:
    """What was sent of one job's text (pure: the decisions, without Redis)."""

    sent: str = ""
    holding: bool = False  # stopped relaying: the end comes from the recorded result

    def take(self, pos: int, text: str) -> str:
        """The part of a delta (``text`` at character ``pos``) to send now: past what was sent, and only
        while deltas still continue what was sent."""
        if self.holding:
            return ""
        already = self.sent[pos:]
        if pos > len(self.sent) or already[: len(text)] != text[: len(already)]:
            self.holding = True  # a gap, or a re-run whose text differs: the rest comes from the result
            return ""
        new = text[len(already) :]
        self.sent += new
        return new

    def rest(self, recorded: str) -> str | None:
        """The recorded text past what was sent; ``None`` when what was sent is not its beginning."""
        return recorded[len(self.sent) :] if recorded.startswith(self.sent) else None


@dataclass(frozen=True)
class Ended:
    """The last item of a relay: the job as recorded (or as it was at the timeout)."""

    view: JobView
    rest: str | None  # the recorded text past what was relayed; None: no text, or it does not continue it


async def relay(
    events: JobEvents, *, tenant: Tenant, job_id: str, timeout_s: float
) -> AsyncGenerator[str | Ended, None]:
    """The job's new text as the worker publishes it, then :class:`Ended`."""
    deadline = time.monotonic() + timeout_s
    state = Relay()
    async for text in _deltas(events, state, job_id=job_id, deadline=deadline):
        yield text
    view = await events.wait(tenant=tenant, job_id=job_id, timeout_s=max(0.0, deadline - time.monotonic()))
    yield Ended(view=view, rest=state.rest(view.result.text) if view.result is not None else None)


async def _deltas(events: JobEvents, state: Relay, *, job_id: str, deadline: float) -> AsyncIterator[str]:
    """Until the end marker, a gap, the deadline, Redis failing, or the job ending without a marker
    (cancelled while queued; a marker lost): then the recorded result says the rest."""
    client = events.stream_client()
    try:
        with events.waiters.watch(job_id) as ended:
            async for text in _entries(client, state, job_id=job_id, deadline=deadline, ended=ended):
                yield text
    finally:
        with CancelScope(shield=True):  # a client that went away cancels us: close the connection anyway
            await client.aclose()


async def _entries(
    client: aioredis.Redis, state: Relay, *, job_id: str, deadline: float, ended: asyncio.Event
) -> AsyncIterator[str]:
    after = "0-0"
    while not state.holding:
        block_ms = int(min(STREAM_BLOCK_MS, (deadline - time.monotonic()) * 1000))
        if block_ms <= 0:
            return
        try:
            entries = await streams.read(client, job_id, after=after, block_ms=block_ms)
        except redis.RedisError as exc:
            log.warning("token stream of %s unreadable (%s); it ends with the recorded result", job_id, exc)
            return
        for entry in entries:
            after = entry.id
            if entry.end:
                return
            if new := state.take(entry.pos, entry.text):
                yield new
        if not entries and ended.is_set():
            return
