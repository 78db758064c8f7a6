"""The app's public environment: plain Alembic, the URL from SAAS_DATABASE_URL."""

import os

import sqlalchemy as sa
from alembic import context

url = sa.engine.make_url(os.environ["SAAS_DATABASE_URL"]).set(drivername="postgresql+psycopg2")
engine = sa.create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
