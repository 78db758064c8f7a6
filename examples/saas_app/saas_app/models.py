"""The tables inside every account's schema (declared without a schema)."""

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class TenantBase(DeclarativeBase):
    pass


class Customer(TenantBase):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    email: Mapped[str | None] = mapped_column(sa.String(320))


class Invoice(TenantBase):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("customers.id"))
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    paid: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    note: Mapped[str | None] = mapped_column(sa.Text)
    currency: Mapped[str] = mapped_column(sa.String(3), server_default="EUR")
    customer_count: Mapped[int | None] = mapped_column(sa.Integer)
