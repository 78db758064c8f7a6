"""The worker's event-loop timer keeps only entries that can still fire (Kombu's own Timer)."""

from kombu.asynchronous.timer import Timer


def test_cancelled_entries_leave_the_heap_and_the_rest_fire_in_order() -> None:
    from tenantfleet.workers.consumer import prune_cancelled  # the Celery app: not at collection

    timer = Timer()
    fired: list[int] = []
    entries = [timer.call_after(900 - n, fired.append, (n,)) for n in range(1000)]
    for entry in entries[::2]:
        timer.cancel(entry)  # what Celery does when a task ends before its time limit
    assert prune_cancelled(timer) == 500 and len(timer) == 500
    assert prune_cancelled(timer) == 0
    due = [scheduled.entry for scheduled in timer.queue]  # earliest first
    assert [e.args[0] for e in due] == sorted(range(1, 1000, 2), reverse=True)
    queue = timer._queue
    assert all(queue[(i - 1) // 2].eta <= queue[i].eta for i in range(1, len(queue)))
