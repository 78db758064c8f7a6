"""a succeeded tenant's finished_at is when its migration ended, not when it began

``tenantfleet_mark_succeeded`` runs inside the tenant's migration transaction, after the
upgrade. It set ``finished_at = now()``: PostgreSQL's ``now()`` is the transaction's start, so a
tenant whose backfill took minutes was recorded as finished the moment it started (the attempt
row already used ``clock_timestamp()``). The registry's ``last_migrated_at``, the W2 bench's
makespan and any interval read from the run rows were short by the tenant's own duration. The
function is 20251205_000000's with that one expression changed.

Revision ID: 20251207_000000
Revises: 20251206_000000
Create Date: 2025-12-07 00:00:00
"""

from alembic import op

revision = "20251207_000000"
down_revision = "20251206_000000"
branch_labels = None
depends_on = None

FUNCTIONS_REVISION = "20251205_000000"
NAME = "tenantfleet_mark_succeeded("
BEGAN = "finished_at = now(),"
ENDED = "finished_at = clock_timestamp(),"


def _mark_succeeded() -> tuple[str, str, str]:
    """20251205_000000's signature, pinned settings and body of the success mark."""
    script = op.get_context().script
    assert script is not None, "run through an Alembic environment"
    found = script.get_revision(FUNCTIONS_REVISION)
    assert found is not None and found.module is not None
    functions = found.module
    signature, body = next(
        (signature, body) for signature, body in functions.FUNCTIONS.items() if NAME in signature
    )
    return signature, functions.PINNED, body


def _replace(signature: str, pinned: str, body: str) -> None:
    op.execute(
        f"CREATE OR REPLACE FUNCTION public.{signature} LANGUAGE plpgsql VOLATILE {pinned}"
        f" AS $body${body}\n$body$"
    )


def upgrade() -> None:
    signature, pinned, body = _mark_succeeded()
    assert body.count(BEGAN) == 1
    _replace(signature, pinned, body.replace(BEGAN, ENDED))


def downgrade() -> None:
    _replace(*_mark_succeeded())
