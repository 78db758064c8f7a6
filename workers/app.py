"""Building the Celery app from the settings: long-task safety first, events on for Flower."""

from celery import Celery
from kombu import Queue

from tenantfleet import config
from tenantfleet.config import CONTROL_QUEUE, TENANT_QUEUE

TASK_MODULES = ["tasks.tenant", "tasks.finalize"]


def create_app(settings: config.Settings | None = None) -> Celery:
    settings = settings or config.load_settings()
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # look for overdue unacked messages (a worker killed outright) every 10 s, not ~100 s
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    }
    app = Celery(
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
        task_queues=[Queue(TENANT_QUEUE), Queue(CONTROL_QUEUE)],
        task_default_queue=CONTROL_QUEUE,
        task_routes={"tenantfleet.migrate_tenant": {"queue": TENANT_QUEUE}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
    )
    return app
