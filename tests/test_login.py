"""A login the database refuses is a configuration to fix, said at once: never an outage that a
worker retries forever (a real server refusing an unknown role)."""

import sqlalchemy as sa

from tenantfleet import db, runs
from tenantfleet.errors import LoginRefused


def test_a_refused_login_is_a_configuration_error_not_an_outage(pg_admin_url: str) -> None:
    # imported here: the tasks module makes the Celery app, which must see the test's broker
    from tenantfleet.tasks import tenant as tenant_task

    url = sa.make_url(pg_admin_url).set(username="nobody_tenantfleet", password="wrong")
    engine = db.make_engine(url.render_as_string(hide_password=False))
    try:
        try:
            with db.connect(engine):
                raise AssertionError("the login was accepted")
        except LoginRefused as exc:
            refused = exc
    finally:
        engine.dispose()
    assert "refuses the login" in str(refused) and "wrong" not in str(refused)
    assert not db.is_unreachable(refused) and not db.is_transient(refused)
    seen = tenant_task._Seen("w1@host:42", None, None)
    task = runs.TenantTask(7, "uid", "acme", "r2", "shard2")
    said = tenant_task._explained(refused, task, seen)
    kind, recorded = db.describe_error(said)
    assert kind == "LoginRefused"
    assert recorded.startswith("worker w1@host:42 cannot log in to database shard2: ")
