"""Which adapter queues a worker starts consuming."""

from __future__ import annotations

from workers.queue_consumer import queues_to_add


def test_adds_only_queues_not_yet_consumed() -> None:
    assert queues_to_add(["upper", "rot13"], {"loraq.default", "lora.upper"}) == ["lora.rot13"]


def test_nothing_to_add_when_all_consumed() -> None:
    assert queues_to_add([], {"lora.upper"}) == []
