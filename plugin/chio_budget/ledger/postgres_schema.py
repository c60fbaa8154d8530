"""The PostgreSQL ledger's schema: created on first use, versioned, migrated in one transaction.

Everything lives in one PostgreSQL schema (``?schema=``, default
``chio_budget``): tables from ``sql/postgres_schema.sql``, the operations as
functions from ``sql/postgres_functions.sql``, and ``meta.version``.

The first operation of a ledger object checks the version (one cheap read).
When the schema is missing or older, it takes a transaction-level advisory
lock (so of several replicas starting together exactly one does the work,
and the others wait and then see it done), then creates the schema or
applies each migration in ``MIGRATIONS`` in turn, re-creates the functions
and records the new version, all in that one transaction: a failure leaves
the old schema as it was. A schema newer than this code is refused
(``LedgerError``), so a replica left on old code fails closed instead of
writing what the new code would misread. Upgrading: deploy the new code to
every replica; the first one to touch the ledger migrates it.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from ..errors import LedgerError

SCHEMA_VERSION = 1

MIGRATIONS: dict[int, str] = {}
"""Version ``v`` -> the ``sql/`` file that turns a version-``v`` schema into ``v + 1`` (tables only;
the functions are re-created from ``postgres_functions.sql`` after the last step). None yet."""

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(name: Any) -> str:
    """A plain lower-case identifier (no quoting surprises in ``psql``, no injection)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("pg_"):
        raise LedgerError(f"postgres ledger: schema must match [a-z_][a-z0-9_]* (at most 63, not pg_*), "
                          f"got {name!r}")
    return name


def _sql(name: str) -> str:
    return resources.files(__package__).joinpath("sql", name).read_text(encoding="utf-8")


def schema_version(conn: psycopg.Connection, schema: str) -> int | None:
    """The recorded version, or None when the schema has no ledger yet."""
    # a catalog query, not to_regclass(): the latter may answer from a cache that still says
    # "no such table" after another replica created it while we waited for the lock
    if conn.execute("SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'meta'",
                    [schema]).fetchone() is None:
        return None
    row = conn.execute(sql.SQL("SELECT value FROM {}.meta WHERE name = 'version'").format(sql.Identifier(schema))
                       ).fetchone()
    return None if row is None else int(row[0])


def ensure_schema(conn: psycopg.Connection, schema: str) -> None:
    """Leave ``schema`` at ``SCHEMA_VERSION`` (``conn`` is in autocommit mode)."""
    if schema_version(conn, schema) == SCHEMA_VERSION:
        return
    with conn.transaction():
        # READ COMMITTED whatever the ledger's isolation: the check after the lock must see the
        # schema another replica committed while we waited
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"chio-budget ledger {schema}"])
        version = schema_version(conn, schema)  # again, under the lock
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise LedgerError(f"postgres ledger: schema {schema!r} is at version {version}; this code knows "
                              f"up to {SCHEMA_VERSION}: upgrade this replica")
        ident = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        if version is None:
            conn.execute(_sql("postgres_schema.sql").encode())
            conn.execute("INSERT INTO meta (name, value) VALUES ('version', '0')")
        else:
            for step in range(version, SCHEMA_VERSION):
                conn.execute(_sql(MIGRATIONS[step]).encode())
        conn.execute(_sql("postgres_functions.sql").encode())
        conn.execute("UPDATE meta SET value = %s WHERE name = 'version'", [str(SCHEMA_VERSION)])
