"""The Celery task that runs one job: hand it to the runtime and wait.

Task id = job id. The message is acknowledged after the result is recorded
(``acks_late``), so a worker killed mid-batch leaves it for redelivery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from sqlalchemy.exc import OperationalError

from registry.schemas import Priority, TaskJob
from workers.contract.messages import Publisher, TaskPayload, argsrepr_for, waiting_since
from workers.contract.names import RUN_CHUNK_TASK, RUN_JOB_TASK
from workers.runtime import Runtime

log = logging.getLogger(__name__)

DB_RETRY_DELAY_S = 2.0
RETRY_DELAY_S = 1.0  # before a job that failed unexpectedly runs again (its attempts are counted)
DB_RETRIES = 150  # five minutes of database outage before the message is given up


def register_tasks(
    app: Celery,
    runtime: Callable[[], Runtime],
    *,
    publisher: Publisher,
    pulled: Callable[[str], None] = lambda adapter: None,
) -> None:
    """``pulled`` hears the adapter of every message received (the planner's starvation clock)."""

    def requeue(task: Any, payload: TaskPayload | list[TaskPayload], **options: Any) -> BaseException:
        """Celery's own retry, sent as the gateway would: no prompt in ``argsrepr`` (Celery drops the
        original's), and the adapter marked in the backlog index once the message is back in Redis."""
        retry: BaseException = task.retry(throw=False, argsrepr=argsrepr_for(payload), **options)
        publisher.mark(waiting_since(payload))
        return retry

    @app.task(name=RUN_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)  # type: ignore[untyped-decorator]
    def run_job(self: Any, payload: dict[str, Any]) -> dict[str, object]:
        job_id: str = self.request.id
        try:
            task = TaskJob.model_validate(payload)
            pulled(task.adapter)
            outcome = runtime().run(task)
        except OperationalError as exc:
            # The registry is unreachable: put the job back rather than lose it.
            raise requeue(self, payload, exc=exc, countdown=DB_RETRY_DELAY_S, max_retries=DB_RETRIES) from exc
        except Exception as exc:
            # Anything else would be acknowledged with the row left live forever:
            # record the failure on the job (exactly once) and report it.
            log.exception("job %s failed in the worker", job_id)
            message = f"{type(exc).__name__}: {exc}"[:2000]
            return runtime().fail(job_id, code="worker_error", message=message).as_celery_result()
        if outcome.status == "retry":  # the row failed unexpectedly and has attempts left
            raise requeue(self, payload, countdown=RETRY_DELAY_S, max_retries=None)
        return outcome.as_celery_result()

    @app.task(name=RUN_CHUNK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)  # type: ignore[untyped-decorator]
    def run_chunk(self: Any, payload: list[dict[str, Any]]) -> dict[str, object]:
        """Up to K jobs of one adapter from a bulk file. The message is acknowledged once every
        job is recorded; a job to retry goes back to its queue alone, as a job message."""
        try:
            tasks = [TaskJob.model_validate(p) for p in payload]
            for adapter in {t.adapter for t in tasks}:
                pulled(adapter)
            outcomes = runtime().run_many(tasks)
        except OperationalError as exc:
            raise requeue(self, payload, exc=exc, countdown=DB_RETRY_DELAY_S, max_retries=DB_RETRIES) from exc
        except Exception as exc:
            log.exception("chunk %s failed in the worker", self.request.id)
            return fail_chunk(runtime(), payload, exc)
        return requeue_retries(publisher, tasks, [o.status for o in outcomes])


def fail_chunk(runtime: Runtime, payload: list[dict[str, Any]], exc: Exception) -> dict[str, object]:
    """Record every job of a chunk the worker could not run at all as failed (exactly once)."""
    message = f"{type(exc).__name__}: {exc}"[:2000]
    job_ids = [str(p["job_id"]) for p in payload if isinstance(p, dict) and p.get("job_id")]
    for job_id in job_ids:
        runtime.fail(job_id, code="worker_error", message=message)
    return {"jobs": len(payload), "statuses": {"failed": len(job_ids)}}


def requeue_retries(publisher: Publisher, tasks: list[TaskJob], statuses: list[str]) -> dict[str, object]:
    """A chunk's job to retry goes back to its queue alone, as the same message the gateway sends."""
    counts: dict[str, int] = {}
    for task, status in zip(tasks, statuses, strict=True):
        if status == "retry":
            publisher.publish(task, priority=Priority.BULK)
        counts[status] = counts.get(status, 0) + 1
    return {"jobs": len(tasks), "statuses": counts}
