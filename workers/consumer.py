"""The worker's consumer: task events sent in batches on a short timer, and the event loop's
timer kept to the entries that can still fire.

Celery buffers task events and, by default, publishes the buffer on the next turn of the event
loop: at fleet speed that is one Redis round trip per event, three per task, all in the worker's
main process, which also hands out every message. Publishing at most every
``EVENT_FLUSH_INTERVAL`` seconds (or when Celery's buffer of 24 fills) sends one ``task.multi``
message per batch instead; Flower shows each event that much later.

Every task the pool starts sets two timers in the main process (its soft and hard time limits);
when it ends they are cancelled, but a cancelled entry stays in the timer's heap until its time
comes, ``task_time_limit`` later. At 100 tenants a second that is ~180,000 entries, 60 MB: the
worker's main process grew from 98 to 160 MB over 100,000 tenants. ``prune_cancelled`` drops
them every ``TIMER_PRUNE_INTERVAL`` seconds.
"""

import heapq
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.asynchronous.timer import Timer
from kombu.common import ignore_errors

EVENT_FLUSH_INTERVAL = 0.1
TIMER_PRUNE_INTERVAL = 10.0


def prune_cancelled(timer: Timer) -> int:
    """Drop the cancelled entries from ``timer``'s heap, in place (the loop iterating it holds
    the same list); how many went."""
    queue: list[Any] = timer._queue
    kept = [scheduled for scheduled in queue if not scheduled.entry.canceled]
    dropped = len(queue) - len(kept)
    if dropped:
        heapq.heapify(kept)
        queue[:] = kept
    return dropped


class Consumer(CeleryConsumer):
    """Celery's consumer; the moment task events are flushed differs, and its timer is pruned."""

    _event_flush_scheduled = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.hub:  # before the loop starts: Celery keeps it across reconnections
            self.hub.call_repeatedly(TIMER_PRUNE_INTERVAL, prune_cancelled, self.hub.timer)

    def on_send_event_buffered(self) -> None:
        if self.hub and not self._event_flush_scheduled:
            self._event_flush_scheduled = True
            self.hub.call_later(EVENT_FLUSH_INTERVAL, self._flush_events_on_timer)

    def _flush_events_on_timer(self) -> None:
        self._event_flush_scheduled = False
        self._flush_events()

    def shutdown(self) -> None:
        """Send what is still buffered before the connection goes."""
        if self.event_dispatcher:
            ignore_errors(self, self._flush_events)
        super().shutdown()
