"""Flower that shows every adapter queue: ``python -m gateway.flower [celery flower args]``.

Flower lists only the queues some worker consumes right now (it asks the
workers; ``get_active_queue_names`` in flower's ``views/__init__.py``). A
sticky worker consumes a few queues at a time, so the queues that wait are
the ones Flower would hide. This launcher adds the registry's routed
adapters (``lora.<name>``) to that list, then runs ``celery flower`` as usual.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from registry.adapters import active_adapter_names
from registry.db import engine_from_settings, session_factory
from registry.settings import DatabaseSettings
from workers.contract.names import queue_name

log = logging.getLogger(__name__)


def adapter_queues_from_registry(settings: DatabaseSettings) -> Callable[[], set[str]]:
    sessions = session_factory(engine_from_settings(settings))

    def queues() -> set[str]:
        try:
            with sessions() as session:
                return {queue_name(n) for n in active_adapter_names(session)}
        except Exception:  # Flower keeps serving what the workers report
            log.warning("registry unreachable; showing only the queues workers consume", exc_info=True)
            return set()

    return queues


def include_queues(extra: Callable[[], set[str]]) -> None:
    """Make Flower's queue list the union of what workers consume and ``extra()``."""
    from flower.views import BaseHandler

    reported = BaseHandler.get_active_queue_names

    def get_active_queue_names(self: BaseHandler) -> list[str]:
        return sorted(set(reported(self)) | extra())

    BaseHandler.get_active_queue_names = get_active_queue_names


def main() -> None:
    include_queues(adapter_queues_from_registry(DatabaseSettings()))
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
