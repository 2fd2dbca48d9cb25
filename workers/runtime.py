"""One worker process's runtime: batches of jobs -> engine -> registry.

``run_batch`` is the whole life of a batch: mark jobs running (skipping those
already terminal), generate, isolate failures row by row, record every
outcome in one transaction, then announce the ended jobs (one notification
per commit; streamed jobs also get their token stream's end marker).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from registry import jobs
from registry.adapters import BASE_ADAPTER, BASE_URI
from registry.db import transaction
from registry.models import utcnow
from registry.schemas import GenerationResult, JobError, TaskJob
from workers import metrics
from workers.batcher import Batcher
from workers.contract.notify import Notifier
from workers.errors import EngineError
from workers.gate import Gate
from workers.generation import AdapterRef, Generator, GenRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowFailure:
    """A row the engine could not generate; ``retryable`` unless the job itself is at fault."""

    code: str
    message: str
    retryable: bool


@dataclass(frozen=True)
class TaskOutcome:
    """What a Celery task returns: the job as the registry recorded it, or
    ``retry`` for a row that failed unexpectedly and has attempts left."""

    job_id: str
    status: str
    result: GenerationResult | None = None
    error: JobError | None = None

    def as_celery_result(self) -> dict[str, object]:
        out: dict[str, object] = {"job_id": self.job_id, "status": self.status}
        if self.result is not None:
            out.update(self.result.model_dump(mode="json"))
        if self.error is not None:
            out["error"] = self.error.model_dump()
        return out


def recordable(result: GenerationResult) -> GenerationResult:
    """Text every database can store: NUL (which PostgreSQL text refuses) becomes U+FFFD."""
    if "\x00" not in result.text:
        return result
    return result.model_copy(update={"text": result.text.replace("\x00", "\ufffd")})


def adapter_key(task: TaskJob) -> str:
    """The engine's key of a task's adapter version."""
    return f"v{task.version_id}"


def to_request(task: TaskJob, *, prompt: str | None = None) -> GenRequest:
    return GenRequest(
        job_id=task.job_id,
        prompt=task.prompt if prompt is None else prompt,
        sampling=task.sampling,
        adapter=None
        if task.uri == BASE_URI
        else AdapterRef(key=adapter_key(task), uri=task.uri, sha256=task.sha256, name=task.adapter),
        stream=task.stream,
    )


def quarantined(attempts: int, max_attempts: int) -> RowFailure:
    """A job whose runs all ended with its worker: it is not run again."""
    return RowFailure(
        code="job_quarantined",
        message=(
            f"this job was running each time its worker died ({attempts - 1} times); it is quarantined and will "
            f"not run again (LORAQ_MAX_ATTEMPTS={max_attempts}). Check its prompt and adapter, then resubmit."
        ),
        retryable=False,
    )


def cost_shares(produced: Sequence[GenerationResult | RowFailure], run_time: float) -> list[float]:
    """The batch's time split over its rows by their tokens (a failed row weighs one token): what each
    job cost in worker-seconds. The shares add up to the batch's time."""
    weights = [r.prompt_tokens + r.completion_tokens if isinstance(r, GenerationResult) else 1 for r in produced]
    total = sum(weights)
    return [run_time * w / total if total else 0.0 for w in weights]


def observe_batch(
    tasks: Sequence[TaskJob],
    produced: Sequence[GenerationResult | RowFailure],
    *,
    retry: set[str],
    started: float,
    run_time: float,
) -> None:
    """Count a batch and its rows in the worker's metrics (what this delivery ran, duplicates included)."""
    if not tasks:
        return
    metrics.BATCHES.inc()
    metrics.BATCH_ROWS.observe(len(tasks))
    metrics.BATCH_ADAPTERS.observe(len({t.version_id for t in tasks}))
    for task, result in zip(tasks, produced, strict=True):
        status = "retry" if task.job_id in retry else "succeeded" if isinstance(result, GenerationResult) else "failed"
        metrics.JOBS.labels(task.adapter, str(task.version), status).inc()
        metrics.QUEUE_WAIT.labels(task.adapter).observe(max(0.0, started - task.enqueued_at))
        metrics.RUN_TIME.labels(task.adapter).observe(run_time)
        if isinstance(result, GenerationResult):
            metrics.PROMPT_TOKENS.labels(task.adapter).inc(result.prompt_tokens)
            metrics.COMPLETION_TOKENS.labels(task.adapter).inc(result.completion_tokens)


class Runtime:
    def __init__(
        self,
        *,
        generator: Generator,
        sessions: sessionmaker[Session],
        worker_name: str,
        max_rows: int,
        wait_s: float,
        max_attempts: int = 3,
        in_flight: int = 1,
        fault_kill_marker: str | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.notifier = notifier  # None: nobody is told (tests of the runtime alone)
        self.fault_kill_marker = fault_kill_marker
        self.gate = Gate()
        self.generator = generator
        self.sessions = sessions
        self.worker_name = worker_name
        self.batcher: Batcher[TaskJob, TaskOutcome] = Batcher(
            self.run_batch, max_rows=max_rows, wait_s=wait_s, in_flight=in_flight
        )

    def resident_adapters(self) -> set[str]:
        """Names of the adapters whose weights the engine holds now (any version); the base model
        alone is always resident."""
        return set(self.generator.resident_adapters()) | {BASE_ADAPTER}

    def run(self, task: TaskJob) -> TaskOutcome:
        """Called from a Celery pool thread; blocks until the job's batch is done."""
        return self.run_many([task])[0]

    def run_many(self, tasks: Sequence[TaskJob]) -> list[TaskOutcome]:
        """A chunk's jobs: each joins the batches as a row of its own; blocks until all are done."""
        metrics.ROWS_IN_FLIGHT.inc(len(tasks))
        try:
            futures = [self.batcher.submit(t) for t in tasks]
            return [f.result() for f in futures]
        finally:
            metrics.ROWS_IN_FLIGHT.dec(len(tasks))

    def run_batch(self, tasks: Sequence[TaskJob]) -> list[TaskOutcome]:
        """Run fresh rows as one batch; rows that were started before (their worker died, or they
        failed unexpectedly) run one at a time with the engine to themselves, and are only then
        counted as started, so a crash is charged to the row that was running alone."""
        with transaction(self.sessions) as session:
            before = jobs.live_attempts(session, job_ids=[t.job_id for t in tasks])
        fresh = [t for t in tasks if before.get(t.job_id) == 0]
        retry: set[str] = set()
        if fresh:
            with self.gate.shared():
                retry |= self._run_rows(fresh)
        for task in (t for t in tasks if before.get(t.job_id, 0) > 0):
            with self.gate.exclusive():
                retry |= self._run_rows([task])
        with transaction(self.sessions) as session:
            truth = jobs.recorded(session, [t.job_id for t in tasks])
        return [
            TaskOutcome(job_id=t.job_id, status="retry")
            if t.job_id in retry
            else self._outcome(t.job_id, truth.get(t.job_id))
            for t in tasks
        ]

    def _run_rows(self, tasks: Sequence[TaskJob]) -> set[str]:
        """Start, generate and record ``tasks``; returns the ids to run again (failed unexpectedly,
        attempts left). A row past its attempts is quarantined instead of run."""
        with transaction(self.sessions) as session:
            attempts = jobs.start(session, job_ids=[t.job_id for t in tasks], worker=self.worker_name)
        runnable = [t for t in tasks if t.job_id in attempts]
        started = time.time()
        produced = [
            quarantined(attempts[t.job_id], self.max_attempts) if attempts[t.job_id] > self.max_attempts else None
            for t in runnable
        ]
        generated = iter(self._generate_isolating([t for t, p in zip(runnable, produced, strict=True) if p is None]))
        results = [p if p is not None else next(generated) for p in produced]
        retry = {
            t.job_id
            for t, r in zip(runnable, results, strict=True)
            if isinstance(r, RowFailure) and r.retryable and attempts[t.job_id] < self.max_attempts
        }
        run_time = time.time() - started
        self._record(runnable, results, retry=retry, started=started, run_time=run_time)
        return retry

    def _record(
        self,
        tasks: Sequence[TaskJob],
        results: Sequence[GenerationResult | RowFailure],
        *,
        retry: set[str],
        started: float,
        run_time: float,
    ) -> None:
        finished = utcnow()
        shares = cost_shares(results, run_time)
        outcomes = [
            jobs.Outcome(
                job_id=t.job_id,
                worker=self.worker_name,
                queue_wait_s=max(0.0, started - t.enqueued_at),
                run_time_s=run_time,
                finished_at=finished,
                result=recordable(r) if isinstance(r, GenerationResult) else None,
                error=JobError(code=r.code, message=r.message) if isinstance(r, RowFailure) else None,
                worker_seconds=share,
            )
            for t, r, share in zip(tasks, results, shares, strict=True)
            if t.job_id not in retry
        ]
        with transaction(self.sessions) as session:
            jobs.record(session, outcomes)
        self._announce([o.job_id for o in outcomes], streamed={t.job_id for t in tasks if t.stream})
        observe_batch(tasks, results, retry=retry, started=started, run_time=run_time)
        self._log_rows(tasks, results, retry)
        if tasks:
            log.info(
                "batch of %d rows (%d adapters) in %.3fs", len(tasks), len({t.version_id for t in tasks}), run_time
            )

    def _log_rows(
        self, tasks: Sequence[TaskJob], produced: Sequence[GenerationResult | RowFailure], retry: set[str]
    ) -> None:
        """One line per job, with its fields (JSON off a terminal): an operator greps a job id."""
        for task, result in zip(tasks, produced, strict=True):
            fields = {
                "job_id": task.job_id,
                "adapter": task.adapter,
                "version": task.version,
                "worker": self.worker_name,
                "tenant": task.tenant,
            }
            if isinstance(result, GenerationResult):
                log.info("job succeeded (%d tokens)", result.completion_tokens, extra=fields)
            elif task.job_id in retry:
                log.warning("job failed (%s), will run again: %s", result.code, result.message, extra=fields)
            else:
                log.warning("job failed (%s): %s", result.code, result.message, extra=fields)

    def fail(self, job_id: str, *, code: str, message: str) -> TaskOutcome:
        """Record a job the worker could not run at all (bad message, internal error)."""
        with transaction(self.sessions) as session:
            jobs.fail_one(session, job_id=job_id, worker=self.worker_name, code=code, message=message)
        self._announce([job_id], streamed={job_id})  # its message may be unreadable: end a stream it may have
        return TaskOutcome(job_id=job_id, status="failed", error=JobError(code=code, message=message))

    def _announce(self, job_ids: Sequence[str], *, streamed: set[str]) -> None:
        """After the commit: wake the gateways waiting on ``job_ids`` (one message), end their streams."""
        if self.notifier is not None:
            self.notifier.recorded(job_ids, streamed=[j for j in job_ids if j in streamed])

    @staticmethod
    def _outcome(job_id: str, truth: jobs.Recorded | None) -> TaskOutcome:
        """Report what the registry holds, whichever delivery recorded it."""
        if truth is None:
            return TaskOutcome(job_id=job_id, status="unknown")  # the row was discarded (never accepted)
        return TaskOutcome(job_id=job_id, status=truth.status, result=truth.result, error=truth.error)

    def _generate_isolating(self, tasks: Sequence[TaskJob]) -> list[GenerationResult | RowFailure]:
        """Run the batch; if it fails, run each row alone so one bad row fails alone."""
        prepared = [self._prepare(t) for t in tasks]
        produced = iter(self._generate_requests([p for p in prepared if isinstance(p, GenRequest)]))
        return [p if isinstance(p, RowFailure) else next(produced) for p in prepared]

    def _prepare(self, task: TaskJob) -> GenRequest | RowFailure:
        """The engine's request; chat messages are rendered with the base model's template here."""
        if self.fault_kill_marker and self.fault_kill_marker in task.prompt:
            log.critical("fault injection: job %s carries the kill marker; the worker exits", task.job_id)
            os._exit(137)
        if task.messages is None:
            return to_request(task)
        try:
            return to_request(task, prompt=self.generator.render_chat(task.messages))
        except EngineError as exc:
            return RowFailure(code=exc.code, message=str(exc), retryable=False)

    def _generate_requests(self, requests: Sequence[GenRequest]) -> list[GenerationResult | RowFailure]:
        if not requests:
            return []
        if len(requests) == 1:
            return [self._generate_one(requests[0])]
        try:
            return list(self.generator.generate(requests))
        except Exception:
            log.warning("batch of %d failed; retrying rows one by one", len(requests), exc_info=True)
        return [self._generate_one(r) for r in requests]

    def _generate_one(self, request: GenRequest) -> GenerationResult | RowFailure:
        try:
            return self.generator.generate([request])[0]
        except EngineError as exc:  # the job itself is wrong: retrying cannot help
            return RowFailure(code=exc.code, message=str(exc), retryable=False)
        except Exception as exc:
            log.exception("job %s failed", request.job_id)
            return RowFailure(code="engine_error", message=f"{type(exc).__name__}: {exc}", retryable=True)
