"""Building the Celery app from the settings: long-task safety first, events on for Flower."""

from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from kombu import Producer

from tenantfleet import config

TASK_MODULES = ["tenantfleet.tasks.tenant", "tenantfleet.tasks.finalize"]


class FleetCelery(Celery):
    """Celery, plus publishing in batches: one Redis pipeline for many messages."""

    @contextmanager
    def batched_publishing(self, max_size: int) -> Iterator[Producer]:
        """A producer whose publications (tasks, and their task-sent events) go out in
        pipelines of ``max_size`` Redis commands, the rest when the block ends (other brokers:
        at once)."""
        with self.producer_or_acquire() as producer, producer.batch(max_size):
            yield producer


def create_app(settings: config.Settings | None = None) -> FleetCelery:
    settings = settings or config.load_settings()
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # look for overdue unacked messages (a worker killed outright) every 10 s, not ~100 s
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    }
    app = FleetCelery(
        "tenantfleet",
        broker=config.broker_url(settings),
        backend=config.result_backend(settings),
        include=TASK_MODULES,
    )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.soft_time_limit,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        # every task names its queue: the queues of the database it belongs to (queues.py);
        # workers consume their own database's (resources.py), never this default
        task_default_queue="tenantfleet.unrouted",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
        worker_consumer="tenantfleet.workers.consumer:Consumer",
    )
    return app
