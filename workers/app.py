"""Building the Celery app from the settings: long-task safety first, events on for Flower."""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery import Celery

from tenantfleet import config

TASK_MODULES = ["tenantfleet.tasks.tenant", "tenantfleet.tasks.finalize"]


_batching_producer: ContextVar[Any] = ContextVar("batching_producer", default=None)


def _no_waiters_while_batching(backend: Any) -> Any:
    """``backend``, waiting for no task's result while a fleet is being sent.

    A group subscribes the sender to every task's result channel as it sends it (``res.then``
    in Celery's ``group._apply_tasks``): 10,000 ``SUBSCRIBE`` commands for a fleet, 13 % of the
    producer's time, for results nobody reads (tenant tasks store none; outcomes are in
    PostgreSQL and the producer follows those). Set on the instance, so the backend still
    pickles as its own class."""
    waiting = backend.add_pending_result

    def add_pending_result(result: Any, *args: Any, **kwargs: Any) -> Any:
        if _batching_producer.get() is not None:
            return result
        return waiting(result, *args, **kwargs)

    backend.add_pending_result = add_pending_result
    return backend


class FleetCelery(Celery):
    """Celery, plus publishing in batches: one Redis pipeline for many messages."""

    def producer_or_acquire(self, producer: Any = None) -> Any:
        return super().producer_or_acquire(producer or _batching_producer.get())

    def _get_backend(self) -> Any:
        return _no_waiters_while_batching(super()._get_backend())

    @contextmanager
    def batched_publishing(self, max_size: int) -> Iterator[None]:
        """Everything published in the block (tasks, and their task-sent events) goes out in
        pipelines of ``max_size`` Redis commands, the rest when the block ends. Needed because a
        chord acquires its own producer for the header and cannot be handed one."""
        with self.producer_or_acquire() as producer, producer.batch(max_size):
            token = _batching_producer.set(producer)
            try:
                yield
            finally:
                _batching_producer.reset(token)


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
