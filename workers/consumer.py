"""The worker's consumer, with task events sent in batches on a short timer.

Celery buffers task events and, by default, publishes the buffer on the next turn of the event
loop: at fleet speed that is one Redis round trip per event, three per task, all in the worker's
main process, which also hands out every message. Publishing at most every
``EVENT_FLUSH_INTERVAL`` seconds (or when Celery's buffer of 24 fills) sends one ``task.multi``
message per batch instead; Flower shows each event that much later.
"""

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.common import ignore_errors

EVENT_FLUSH_INTERVAL = 0.1


class Consumer(CeleryConsumer):
    """Celery's consumer; only the moment task events are flushed differs."""

    _event_flush_scheduled = False

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
