"""A worker's heartbeat: the typed record it announces, and the visibility clock it keeps.

kombu's Redis transport records every delivered, unacknowledged message in
the sorted set ``unacked_index`` (score = delivery time) and any consumer
puts a message back in its queue once its score is older than the
visibility timeout. Refreshing the scores of the messages a worker holds
lets the timeout be short (seconds): a live worker's long job is never
redelivered, and a dead worker's messages come back within
``visibility_timeout`` + one restore sweep.

The record is written by the worker and read by the gateway (``loraq
status``, ``/metrics``); it is a dataclass so both read the same fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import redis

from workers.contract.names import UNACKED_INDEX, WORKER_KEY, worker_key


@dataclass(frozen=True)
class WorkerBeat:
    name: str  # the Celery node name, e.g. worker-1@host
    at: float  # epoch seconds of this beat
    resident: list[str] = field(default_factory=list)  # adapters in the engine's slots
    holding: int = 0  # messages reserved (running or waiting), unacknowledged
    loads: int = 0  # adapter loads into a slot since start
    metrics_port: int | None = None  # where this worker serves /metrics, if it does

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.at)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerBeat | None:
        """The record, or ``None`` for one this version cannot read (a newer worker's, a torn write)."""
        try:
            data = json.loads(raw)
            return cls(
                name=str(data["name"]),
                at=float(data["at"]),
                resident=[str(a) for a in data.get("resident", [])],
                holding=int(data.get("holding", 0)),
                loads=int(data.get("loads", 0)),
                metrics_port=int(data["metrics_port"]) if data.get("metrics_port") is not None else None,
            )
        except (ValueError, KeyError, TypeError):
            return None


def announce(client: redis.Redis, beat: WorkerBeat, *, ttl_s: int) -> None:
    """Publish the record; it expires ``ttl_s`` after the last beat, which is how a dead worker vanishes."""
    client.set(worker_key(beat.name), beat.to_json(), ex=ttl_s)


def read_all(client: redis.Redis) -> list[WorkerBeat]:
    """Every live worker's last record (expired records are gone: their worker stopped beating)."""
    keys = list(client.scan_iter(match=WORKER_KEY.format(name="*"), count=500))
    replies = client.mget(keys) if keys else []
    beats = [WorkerBeat.from_json(raw) for raw in replies if raw]
    return sorted((b for b in beats if b is not None), key=lambda b: b.name)


def refresh_visibility(client: redis.Redis, tags: Iterable[str], *, now: float | None = None) -> int:
    """Move the visibility clock of ``tags`` to now (only tags still unacked); returns how many."""
    now = time.time() if now is None else now
    mapping = {tag: now for tag in tags}
    if not mapping:
        return 0
    changed: int = client.zadd(UNACKED_INDEX, mapping, xx=True, ch=True)  # type: ignore[assignment]
    return changed
