"""The broker queues of one database: its tenant tasks and its run callbacks.

Each control database gets queues of its own, named after the database's identity (the
cluster's ``system_identifier`` and the database's oid), so that worker pools of different
databases sharing one broker never take each other's tasks: a worker pointed at the wrong
database simply does not consume the producer's queue, and the producer can say so. Copies of
one template on one server differ by oid; two servers differ by system identifier.
"""

import hashlib
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

PREFIX = "tenantfleet"

_MAY_READ_CONTROL_SQL = sa.text(
    "SELECT has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')"
)
_IDENTITY_SQL = sa.text(
    "SELECT (SELECT system_identifier FROM pg_control_system())::text || '/'"
    " || (SELECT oid FROM pg_database WHERE datname = current_database())::text"
)
_FALLBACK_IDENTITY_SQL = sa.text(
    "SELECT coalesce(host(inet_server_addr()), 'local') || ':'"
    " || coalesce(inet_server_port(), 0)::text || '/' || current_database()"
)


@dataclass(frozen=True)
class Queues:
    """The queue names of one database."""

    key: str

    @property
    def tenants(self) -> str:
        return f"{PREFIX}.{self.key}.tenants"

    @property
    def control(self) -> str:
        return f"{PREFIX}.{self.key}.control"

    @property
    def names(self) -> tuple[str, str]:
        return (self.tenants, self.control)


def of_database(connection: Connection) -> Queues:
    """The queues of the database ``connection`` is on: named after the cluster's identity, or,
    where the role may not call ``pg_control_system()`` (an administrator revoked it), after the
    server's address. The choice is asked, never inferred from an error: a passing failure to
    read the control file (the data directory's parent made unreadable for a moment) would
    otherwise name a queue no worker consumes, and the run would wait for ever. Such an error
    is raised (a worker waits for its database and asks again)."""
    may_read = connection.execute(_MAY_READ_CONTROL_SQL).scalar_one()
    identity = str(
        connection.execute(_IDENTITY_SQL if may_read else _FALLBACK_IDENTITY_SQL).scalar_one()
    )
    return Queues(hashlib.sha256(identity.encode()).hexdigest()[:12])


def is_tenant_queue(name: str) -> bool:
    return name.startswith(f"{PREFIX}.") and name.endswith(".tenants")
