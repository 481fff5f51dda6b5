"""A fresh PostgreSQL schema per test, for the integration and end-to-end tiers alike."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def fresh_pg_schema() -> Iterator[str]:
    """A URL of a new, empty PostgreSQL schema, dropped again on exit.

    The schema is chosen with libpq's ``options=-csearch_path=...`` in the URL, so every engine
    made from the URL (the app's own included) lands in it. Its name is a uuid, so tests run in
    parallel (pytest-xdist workers) never share one.
    """
    schema = f"t_{uuid.uuid4().hex}"
    admin = create_engine(PG_URL, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            # A test that left a transaction open must not hang the suite here.
            connection.execute(text("SET LOCAL lock_timeout = '10s'"))
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
