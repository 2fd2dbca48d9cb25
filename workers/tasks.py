"""The Celery task that runs one job: hand it to the runtime and wait.

Task id = job id. The message is acknowledged after the result is recorded
(``acks_late``), so a worker killed mid-batch leaves it for redelivery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from registry.queues import RUN_JOB_TASK
from registry.schemas import TaskJob
from workers.runtime import Runtime


def register_tasks(app: Celery, runtime: Callable[[], Runtime]) -> None:
    @app.task(name=RUN_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_job(self: Any, payload: dict[str, Any]) -> dict[str, object]:
        task = TaskJob.model_validate(payload)
        return runtime().run(task).as_celery_result()
