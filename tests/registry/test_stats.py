"""Per-version statistics, on a real database of each backend."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from registry.adapters import get_visible, resolve
from registry.db import transaction
from registry.jobs import start
from registry.stats import latency, percentile, version_stats
from tests.registry.test_adapters_and_jobs import World, failed, record_in_new_transaction, register, submit, succeeded


def test_nearest_rank_percentiles() -> None:
    values = [float(i) for i in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50.0, 95.0, 99.0)
    assert percentile([], 50) == 0.0
    assert latency([3.0, 1.0, 2.0]).p50 == 2.0


def test_each_version_reports_its_jobs_errors_latency_and_tokens(
    session_factory: sessionmaker[Session], world: World
) -> None:
    with transaction(session_factory) as session:
        register(session, world, "upper")
        v1 = resolve(session, tenant=world.acme, name="upper", routing_key="k")
    on_v1 = [submit(session_factory, world.acme, v1) for _ in range(3)]
    with transaction(session_factory) as session:
        register(session, world, "upper")
        v2 = resolve(session, tenant=world.acme, name="upper", routing_key="k")
    on_v2 = [submit(session_factory, world.acme, v2) for _ in range(2)]
    with transaction(session_factory) as session:
        start(session, job_ids=[*on_v1, *on_v2[:1]], worker="w1")
    record_in_new_transaction(
        session_factory,
        [
            succeeded(on_v1[0], "ab"),
            succeeded(on_v1[1], "cd"),
            failed(on_v1[2], "engine_error", "x"),
            succeeded(on_v2[0], "e"),
        ],
    )
    with session_factory() as session:
        stats = {s.version: s for s in version_stats(session, get_visible(session, tenant=world.admin, name="upper"))}
    assert stats[1].jobs == {"succeeded": 2, "failed": 1}
    assert stats[1].error_rate == round(1 / 3, 4)
    assert (stats[1].run_time_s.p50, stats[1].run_time_s.p99, stats[1].run_time_s.samples) == (1.5, 1.5, 3)
    assert (stats[1].prompt_tokens, stats[1].completion_tokens) == (14, 4)
    assert stats[2].jobs == {"succeeded": 1, "queued": 1}
    assert stats[2].error_rate == 0.0 and stats[2].queue_wait_s.p50 == 0.25


def test_a_shadow_version_reports_how_often_it_answered_like_the_primary(
    session_factory: sessionmaker[Session], world: World
) -> None:
    from registry.jobs import create_shadow
    from registry.models import Job

    with transaction(session_factory) as session:
        register(session, world, "upper")
        v1 = resolve(session, tenant=world.acme, name="upper", routing_key="k")
        register(session, world, "upper")
        v2 = resolve(session, tenant=world.acme, name="upper", routing_key="k")
    primaries = [submit(session_factory, world.acme, v2) for _ in range(2)]
    with transaction(session_factory) as session:
        shadows = [
            create_shadow(session, primary=session.get(Job, p), resolved=v1, job_id=f"shadow-{i}").id  # type: ignore[arg-type]
            for i, p in enumerate(primaries)
        ]
        start(session, job_ids=[*primaries, *shadows], worker="w1")
    record_in_new_transaction(
        session_factory,
        [
            succeeded(primaries[0], "SAME"),
            succeeded(shadows[0], "SAME"),
            succeeded(primaries[1], "A"),
            succeeded(shadows[1], "B"),
        ],
    )
    with session_factory() as session:
        stats = {s.version: s for s in version_stats(session, get_visible(session, tenant=world.admin, name="upper"))}
    assert (stats[1].shadow_compared, stats[1].shadow_identical_share) == (2, 0.5)
    assert (stats[2].shadow_compared, stats[2].shadow_identical_share) == (0, None)
