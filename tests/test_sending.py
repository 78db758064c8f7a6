"""A fleet's chord as workers/sending.py sends it is what Celery's own chord would send.

Both are sent to the test Redis and read back (the queue, the task-sent events, the chord's
size): equal apart from the ids, clocks, timestamps and the process id. This is the check that a
Celery or Kombu upgrade has not changed the message the copies are made from.
"""

import base64
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import chord, group

from tenantfleet import dispatch

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CALLS = [(7, "t00001", "r2"), (7, "shard2/t00002", "r2"), (7, "t00003", "r2")]
KWARGS = {"run_uid": "00000000-0000-0000-0000-000000000007", "max_failures": 2}


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis(unix_socket_path=redis_url.removeprefix("redis+socket://"))
    yield client
    client.close()


def _normalized(raw: bytes, ids: dict[str, str]) -> str:
    """A message or event with its body decoded, ids numbered in order of appearance."""
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    text = json.dumps(envelope, sort_keys=True)
    for found in UUID.findall(text):
        text = text.replace(found, ids.setdefault(found, f"id{len(ids)}"))
    text = re.sub(r'"(timestamp|clock|pid)": [0-9.]+', r'"\1": 0', text)
    return re.sub(r"gen\d+@", "gen@", text)


def _sent(broker: redis.Redis, queue: str, send: Any) -> tuple[list[str], int]:
    """What ``send()`` puts on ``queue`` and publishes as events, normalized; the chord size."""
    events: list[bytes] = []
    listening = broker.pubsub()
    listening.psubscribe("*celeryev*")
    listening.get_message(timeout=5)  # the subscription's confirmation
    done = threading.Event()

    def listen() -> None:
        while len(events) < len(CALLS):
            message = listening.get_message(timeout=5)
            if message is None:
                break
            if message["type"] == "pmessage":
                events.append(message["data"])
        done.set()

    threading.Thread(target=listen, daemon=True).start()
    send()
    assert done.wait(30)
    listening.close()
    ids: dict[str, str] = {}
    queued: list[bytes] = list(reversed(broker.lrange(queue, 0, -1)))  # type: ignore[arg-type]
    messages = [_normalized(raw, ids) for raw in queued]
    group_id = json.loads(queued[0])["headers"]["group"]
    size = int(broker.get(f"celery-taskset-meta-{group_id}.s") or 0)
    broker.delete(queue)
    return messages + [_normalized(raw, ids) for raw in events], size


def test_the_copies_are_what_celery_sends(broker: redis.Redis) -> None:
    # imported here, not at collection: the app reads the session's settings (the test Redis)
    from tenantfleet.tasks.tenant import migrate_tenant
    from tenantfleet.workers import app
    from tenantfleet.workers.sending import send_chord

    options = {"time_limit": None, "soft_time_limit": None}

    def by_celery() -> None:
        tasks = group(
            migrate_tenant.si(*call, **KWARGS).set(queue="sending.celery", **options)
            for call in CALLS
        )
        chord(tasks, dispatch.chord_callback(7, "sending.control")).apply_async()

    def by_copies() -> None:
        send_chord(
            app,
            migrate_tenant,
            CALLS,
            KWARGS,
            {"queue": "sending.copies", **options},
            dispatch.chord_callback(7, "sending.control"),
            batch=100,
        )

    celery_sent, celery_size = _sent(broker, "sending.celery", by_celery)
    copies_sent, copies_size = _sent(broker, "sending.copies", by_copies)
    assert [m.replace("sending.celery", "sending.copies") for m in celery_sent] == copies_sent
    assert len(copies_sent) == 2 * len(CALLS)  # every task and its task-sent event
    assert celery_size == copies_size == len(CALLS)
    broker.delete("sending.control")
