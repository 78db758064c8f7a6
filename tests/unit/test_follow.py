"""Who consumes a database's queue: the workers working on a run are asked alone first, and
everyone when one of them does not answer or does not consume the queue. The control API here
answers from a table; tests/test_hardening.py and tests/test_databases.py ask real workers."""

from typing import Any

from tenantfleet import follow
from tenantfleet.queues import Queues

QUEUES = Queues("k1")
OURS = [{"name": QUEUES.tenants}, {"name": QUEUES.control}]
OTHER = [{"name": Queues("k2").tenants}]


class _Inspect:
    def __init__(self, app: "_App", whom: dict[str, Any]) -> None:
        self.app, self.whom = app, whom

    def active_queues(self) -> dict[str, Any]:
        self.app.asked.append(self.whom)
        wanted = self.whom.get("destination")
        return {w: qs for w, qs in self.app.live.items() if wanted is None or w in wanted}


class _App:
    def __init__(self, live: dict[str, Any]) -> None:
        self.live = live
        self.asked: list[dict[str, Any]] = []
        self.control = self

    def inspect(self, timeout: float, **whom: Any) -> _Inspect:
        return _Inspect(self, whom)


def test_the_workers_on_the_run_answer_alone() -> None:
    app = _App({"a@h": OURS, "b@h": OURS, "c@h": OTHER})
    assert follow.consumers(app, QUEUES, ["b@h", "a@h"]) == (["a@h", "b@h"], [])
    assert app.asked == [{"destination": ["b@h", "a@h"], "limit": 2}]


def test_everyone_is_asked_when_one_does_not_answer_or_consume() -> None:
    gone = _App({"a@h": OURS, "c@h": OTHER})
    assert follow.consumers(gone, QUEUES, ["a@h", "b@h"]) == (["a@h"], ["c@h"])
    assert gone.asked[-1] == {}
    elsewhere = _App({"a@h": OURS, "c@h": OTHER})
    assert follow.consumers(elsewhere, QUEUES, ["a@h", "c@h"]) == (["a@h"], ["c@h"])
    assert len(elsewhere.asked) == 2


def test_without_workers_on_the_run_everyone_is_asked() -> None:
    app = _App({"a@h": OURS})
    assert follow.consumers(app, QUEUES) == (["a@h"], [])
    assert app.asked == [{}]
