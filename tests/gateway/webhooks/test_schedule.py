"""Retry timing: exponential, jittered, capped; given up by attempts or age; which answers are retried."""

from __future__ import annotations

import random

from gateway.webhooks.schedule import RetryPolicy, retryable


def test_delays_grow_exponentially_within_the_cap_and_are_jittered() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=30.0)
    rng = random.Random(7)
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (20, 30.0)]:
        delays = [policy.delay_s(attempts, rng) for _ in range(200)]
        assert min(delays) >= 0.0 and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling and len(set(delays)) > 150  # spread over the range


def test_a_delivery_is_given_up_after_its_attempts_or_its_age() -> None:
    policy = RetryPolicy(max_attempts=3, give_up_after_s=60)
    assert not policy.gives_up(attempts=2, age_s=59)
    assert policy.gives_up(attempts=3, age_s=1)
    assert policy.gives_up(attempts=1, age_s=60)


def test_only_answers_that_may_change_are_retried() -> None:
    assert retryable(None) and retryable(500) and retryable(503) and retryable(429) and retryable(408)
    assert not retryable(200) and not retryable(400) and not retryable(404) and not retryable(410)
