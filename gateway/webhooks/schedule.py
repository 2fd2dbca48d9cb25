"""When a failed delivery is tried again, and when it is given up.

Exponential back-off with full jitter (AWS's "exponential backoff and
jitter"): attempt ``n`` waits a uniform time in ``[0, min(cap, base * 2**n)]``,
so receivers that come back after an outage are not hit by every retry at
once. A delivery is given up (``failed``) after ``max_attempts`` or once
``give_up_after_s`` has passed since the event, whichever comes first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 2.0
    cap_s: float = 600.0
    max_attempts: int = 12
    give_up_after_s: float = 24 * 3600.0

    def delay_s(self, attempts: int, rng: random.Random | None = None) -> float:
        """Wait before the next attempt, after ``attempts`` failed ones (``attempts`` >= 1)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** max(0, attempts - 1))
        return (rng or random).uniform(0.0, ceiling)

    def gives_up(self, *, attempts: int, age_s: float) -> bool:
        return attempts >= self.max_attempts or age_s >= self.give_up_after_s


def retryable(status: int | None) -> bool:
    """Whether an answer is worth another attempt: no answer, 408, 409, 425, 429 or a 5xx. Any other
    4xx means the receiver refuses this event; sending it again would be refused again."""
    return status is None or status in (408, 409, 425, 429) or status >= 500
