"""The retry policy of a tenant's transient errors: exponential backoff with full jitter.

A worker sends a tenant's next attempt ``backoff_seconds`` after a transient error; the watchdog
of ``--wait`` reads ``longest_wait`` to tell a retry that is still on its way from a tenant whose
task is lost, so that it never starts a second chain of attempts for a tenant that has one.
"""

import random

from tenantfleet.config import Settings

JITTER = (0.5, 1.5)
"""The nominal delay is multiplied by a random factor in this range."""


def backoff_seconds(settings: Settings, retries: int) -> float:
    """How long to wait before the attempt after ``retries`` retries."""
    nominal = min(settings.retry_backoff_max, settings.retry_backoff * (2**retries))
    return nominal * random.uniform(*JITTER)


def longest_wait(settings: Settings) -> float:
    """The longest a retrying tenant's row may stay unchanged while its next attempt is due."""
    return settings.retry_backoff_max * JITTER[1]
