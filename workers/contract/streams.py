"""Token streams: the text deltas of a streamed job, from the engine to the gateway, through Redis.

One Redis stream per job (``loraq:stream:{id}``, trimmed to about
``STREAM_MAXLEN`` entries and expiring ``STREAM_TTL_S`` after its last one).
A delta entry says where its text starts in the row's text (``pos``), so a
reader can tell a re-run (its worker died, or its batch failed and each row
ran again alone: ``pos`` goes back to 0) and a gap (entries trimmed away, or
dropped while Redis was unreachable) from the next piece. After the job's
outcome is committed the worker appends an end entry.

A stream is a hint, never the answer: the recorded result is. Writers here
are best effort and never raise; readers end with the recorded text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.client import Pipeline

from workers.contract.names import STREAM_MAXLEN, STREAM_TTL_S, stream_key

log = logging.getLogger(__name__)

PAUSE_AFTER_ERROR_S = 5.0  # a writer that could not reach Redis drops deltas this long, not stalling the engine


@dataclass(frozen=True)
class Delta:
    """New text of one row: ``text`` starts at character ``pos`` of the row's text."""

    job_id: str
    pos: int
    text: str


Deltas = Callable[[Sequence[Delta]], None]  # what the engine calls once per forward with its streamed rows' deltas


@dataclass(frozen=True)
class StreamEntry:
    """One entry as a reader sees it: a delta, or the end marker (``end``)."""

    id: str  # the Redis stream entry id, to read on after
    pos: int = 0
    text: str = ""
    end: bool = False


class DeltaWriter:
    """The engine's sink (a :data:`Deltas`): every delta of one forward in one pipelined round trip.

    Called on the engine's thread, so it must not stall it: a short socket timeout on ``client``,
    and after a failure deltas are dropped for ``PAUSE_AFTER_ERROR_S`` (readers see a gap and end
    with the recorded result).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._paused_until = 0.0

    def __call__(self, deltas: Sequence[Delta]) -> None:
        if not deltas or time.monotonic() < self._paused_until:
            return
        pipe = self.client.pipeline(transaction=False)
        for delta in deltas:
            key = stream_key(delta.job_id)
            pipe.xadd(key, {"pos": delta.pos, "text": delta.text}, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.expire(key, STREAM_TTL_S)
        try:
            pipe.execute()
        except Exception:  # best effort: nothing here may fail the engine's step, and with it the rows
            self._paused_until = time.monotonic() + PAUSE_AFTER_ERROR_S
            log.warning("could not publish token deltas; dropping them for %.0fs", PAUSE_AFTER_ERROR_S, exc_info=True)


def add_end(pipe: Pipeline, job_id: str) -> None:
    """Queue the end marker of ``job_id``'s stream on ``pipe`` (after its outcome is committed)."""
    key = stream_key(job_id)
    pipe.xadd(key, {"end": 1}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, STREAM_TTL_S)


def parse(entry_id: str, fields: dict[str, str]) -> StreamEntry:
    if "end" in fields:
        return StreamEntry(id=entry_id, end=True)
    return StreamEntry(id=entry_id, pos=int(fields["pos"]), text=fields["text"])


async def read(client: aioredis.Redis, job_id: str, *, after: str, block_ms: int) -> list[StreamEntry]:
    """Entries of ``job_id``'s stream after entry id ``after`` (``"0-0"``: from the start), waiting up to
    ``block_ms`` (at least 1; 0 would mean forever) for one. ``client`` must decode responses."""
    reply: Any = await client.xread({stream_key(job_id): after}, block=max(1, block_ms))
    # RESP2 answers [[key, entries]], RESP3 {key: entries}; one stream was asked for either way.
    streams = list(reply.values()) if isinstance(reply, dict) else [entries for _, entries in reply or []]
    return [parse(str(entry_id), fields) for entries in streams for entry_id, fields in entries]
