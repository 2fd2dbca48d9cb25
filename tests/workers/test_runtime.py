"""A worker batch end to end inside one process: registry rows -> PEFT engine -> results.

Real engine on the demo model, real registry on SQLite and PostgreSQL. The
poison row is real too: a prompt longer than the model's positions.
"""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from registry import adapters, jobs, keys
from registry.artifacts.checks import validate_adapter
from registry.db import transaction
from registry.models import Job
from registry.schemas import FinishReason, GenerationResult, JobCreate, TaskJob
from workers.contract.names import DONE_CHANNEL, stream_key
from workers.contract.notify import Notifier, decode, push_client
from workers.demo_model import DEMO_DIR as DEMO
from workers.engine import EngineConfig
from workers.engine.peft_baseline import PeftGenerator
from workers.runtime import RowFailure, Runtime, cost_shares


@pytest.fixture(scope="module")
def generator() -> PeftGenerator:
    return PeftGenerator(EngineConfig(base_model=DEMO / "base", device="cpu", dtype="float32", max_loras=4))


def enqueue(sessions: sessionmaker[Session], prompts: list[str]) -> list[TaskJob]:
    info = validate_adapter(str(DEMO / "adapters" / "upper"), base_dir=DEMO / "base", max_bytes=1 << 30)
    tasks = []
    with transaction(sessions) as session:
        tenant = keys.ensure_tenant(session, name="t")
        base = adapters.ensure_base_model(session, name="demo", path=str(DEMO / "base"))
        adapters.register_version(
            session, name="upper", uri=info.path.as_uri(), info=info, base=base, owner=tenant, public=True
        )
        for prompt in prompts:
            request = JobCreate(adapter="upper", prompt=prompt, max_tokens=64)
            resolved = adapters.resolve(session, tenant=tenant, name="upper", routing_key=prompt)
            job = jobs.create_job(session, tenant=tenant, request=request, resolved=resolved, job_id=jobs.new_job_id())
            tasks.append(jobs.task_for(job, resolved, request))
    return tasks


def test_poison_row_fails_alone_and_batch_mates_succeed(
    session_factory: sessionmaker[Session], generator: PeftGenerator
) -> None:
    prompts = ["hello there", "x" * 400, "Mixed batch", "abc def"]
    tasks = enqueue(session_factory, prompts)
    runtime = Runtime(generator=generator, sessions=session_factory, worker_name="w1", max_rows=8, wait_s=0)
    outcomes = runtime.run_batch(tasks)
    assert [o.status for o in outcomes] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert outcomes[1].error is not None and outcomes[1].error.code == "prompt_too_long"
    with session_factory() as session:
        rows = {j.id: j for j in session.scalars(select(Job))}
    for task, prompt in zip(tasks, prompts, strict=True):
        row = rows[task.job_id]
        assert row.attempts == 1 and row.worker == "w1"
        if prompt.startswith("x"):
            assert (row.status, row.error_code, row.text) == ("failed", "prompt_too_long", None)
        else:
            assert (row.status, row.text) == ("succeeded", prompt.upper())
    runtime.batcher.close()


def test_a_redelivered_batch_is_not_rerun_and_reports_the_recorded_result(
    session_factory: sessionmaker[Session], generator: PeftGenerator
) -> None:
    tasks = enqueue(session_factory, ["first", "second"])
    runtime = Runtime(generator=generator, sessions=session_factory, worker_name="w1", max_rows=8, wait_s=0)
    assert [o.status for o in runtime.run_batch(tasks)] == ["succeeded", "succeeded"]
    with session_factory() as session:
        before = [(j.id, j.text, j.finished_at, j.attempts) for j in session.scalars(select(Job).order_by(Job.id))]
    again = [runtime.run(t) for t in tasks]  # through the batcher, as Celery threads do
    assert [(o.status, o.result.text if o.result else None) for o in again] == [
        ("succeeded", "FIRST"),
        ("succeeded", "SECOND"),
    ]
    with session_factory() as session:
        after = [(j.id, j.text, j.finished_at, j.attempts) for j in session.scalars(select(Job).order_by(Job.id))]
    assert after == before
    runtime.batcher.close()


class PoisonOnce:
    """The real engine, except that any batch holding the prompt "poison" raises
    an unexpected error (as a bug in a kernel would); the runtime under test
    must isolate it, retry it, and fail it alone after max_attempts."""

    def __init__(self, engine: PeftGenerator) -> None:
        self.engine = engine

    def generate(self, requests):  # type: ignore[no-untyped-def]
        if any(r.prompt == "poison" for r in requests):
            raise RuntimeError("kernel crashed")
        return self.engine.generate(requests)

    def resident_adapters(self) -> frozenset[str]:
        return self.engine.resident_adapters()

    def describe(self) -> str:
        return "poisoned"

    def adapter_loads(self) -> int:
        return self.engine.adapter_loads()


def test_a_poison_job_is_retried_then_fails_alone_after_max_attempts(
    session_factory: sessionmaker[Session], generator: PeftGenerator
) -> None:
    tasks = enqueue(session_factory, ["good one", "poison", "good two"])
    runtime = Runtime(
        generator=PoisonOnce(generator),
        sessions=session_factory,
        worker_name="w1",
        max_rows=8,
        wait_s=0,
        max_attempts=3,
    )
    first = runtime.run_batch(tasks)
    assert [o.status for o in first] == ["succeeded", "retry", "succeeded"]
    assert [o.status for o in runtime.run_batch([tasks[1]])] == ["retry"]  # redelivered: attempt 2
    [last] = runtime.run_batch([tasks[1]])  # attempt 3: out of attempts
    assert last.status == "failed" and last.error is not None and last.error.code == "engine_error"
    with session_factory() as session:
        poison = session.get(Job, tasks[1].job_id)
        assert poison is not None
        assert (poison.status, poison.attempts, poison.error_code) == ("failed", 3, "engine_error")
        assert "kernel crashed" in (poison.error_message or "")
    runtime.batcher.close()


def test_a_cancelled_queued_job_never_runs(session_factory: sessionmaker[Session], generator: PeftGenerator) -> None:
    [task] = enqueue(session_factory, ["never run me"])
    with transaction(session_factory) as session:
        tenant = keys.ensure_tenant(session, name="t")
        jobs.cancel(session, tenant=tenant, job_id=task.job_id)
    runtime = Runtime(generator=generator, sessions=session_factory, worker_name="w1", max_rows=8, wait_s=0)
    [outcome] = runtime.run_batch([task])
    assert outcome.status == "cancelled" and outcome.result is None
    with session_factory() as session:
        row = session.get(Job, task.job_id)
        assert row is not None and (row.status, row.attempts, row.text) == ("cancelled", 0, None)
    runtime.batcher.close()


def test_a_cancelled_running_row_stops_at_the_next_steps_and_its_batch_mates_do_not() -> None:
    from registry.schemas import SamplingParams
    from workers.generation import GenRequest

    engine = PeftGenerator(
        EngineConfig(base_model=DEMO / "base", device="cpu", dtype="float32", max_loras=2),
        cancelled=lambda ids: {i for i in ids if i == "stop-me"},
    )
    long = "Zebra quartz 42 copied on"
    rows = [
        GenRequest(job_id=j, prompt=long, sampling=SamplingParams(max_tokens=64), adapter=None)
        for j in ("stop-me", "keep-me")
    ]
    stopped, kept = engine.generate(rows)
    assert stopped.completion_tokens <= 4 < len(long)
    assert kept.text == long  # the batch-mate ran to its end


def test_cost_shares_split_a_batchs_time_by_tokens_and_add_up_to_it() -> None:
    ok = GenerationResult(text="x", finish_reason=FinishReason.STOP, prompt_tokens=1, completion_tokens=3)
    shares = cost_shares([ok, RowFailure(code="engine_error", message="x", retryable=False)], 2.0)
    assert shares == [1.6, 0.4] and sum(shares) == 2.0
    assert cost_shares([], 1.0) == []


def test_a_job_that_was_running_each_time_its_worker_died_is_quarantined_and_its_mates_run(
    session_factory: sessionmaker[Session], generator: PeftGenerator
) -> None:
    poison, mate, fresh = enqueue(session_factory, ["poison", "mate", "fresh"])
    with transaction(session_factory) as session:  # three deliveries started and never ended
        session.execute(update(Job).where(Job.id == poison.job_id).values(attempts=3, status="running"))
        session.execute(update(Job).where(Job.id == mate.job_id).values(attempts=1, status="running"))
    runtime = Runtime(generator=generator, sessions=session_factory, worker_name="w1", max_rows=8, wait_s=0)
    outcomes = {o.job_id: o for o in runtime.run_batch([poison, mate, fresh])}
    assert outcomes[poison.job_id].status == "failed"
    assert outcomes[poison.job_id].error is not None and outcomes[poison.job_id].error.code == "job_quarantined"
    assert outcomes[mate.job_id].status == "succeeded"  # a suspect, run alone, not punished
    assert outcomes[fresh.job_id].status == "succeeded"
    with session_factory() as session:
        assert session.get(Job, poison.job_id).attempts == 4  # type: ignore[union-attr]


def test_a_batch_is_announced_once_after_its_commit_and_streamed_jobs_get_their_end_marker(
    session_factory: sessionmaker[Session], generator: PeftGenerator, redis_url: str
) -> None:
    tasks = enqueue(session_factory, ["one", "two", "three"])
    tasks[1] = tasks[1].model_copy(update={"stream": True})
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete(*(stream_key(t.job_id) for t in tasks))
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(DONE_CHANNEL)
    listener.get_message(timeout=1)  # the subscription's confirmation
    notifier = Notifier(push_client(redis_url))
    runtime = Runtime(
        generator=generator, sessions=session_factory, worker_name="w1", max_rows=8, wait_s=0, notifier=notifier
    )
    assert [o.status for o in runtime.run_batch(tasks)] == ["succeeded"] * 3
    runtime.batcher.close()
    messages = [m for _ in range(5) if (m := listener.get_message(timeout=0.2)) is not None]
    assert [sorted(decode(m["data"])) for m in messages] == [sorted(t.job_id for t in tasks)]  # one per commit
    assert [f for _, f in client.xrange(stream_key(tasks[1].job_id))] == [{"end": "1"}]  # PEFT sends it whole
    assert not client.exists(stream_key(tasks[0].job_id))
