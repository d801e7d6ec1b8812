"""Several SQL statements in one round trip, where the database driver allows it.

A hot path that must run a few short statements in order (take a lock, then
read what the lock protects) pays one round trip per statement, and under load
each round trip also waits for the GIL. Django's psycopg cursor binds parameters
on the client by default and then takes several statements in one request; each
still gets its own snapshot, in order. With `server_side_binding` on (one
statement per request), and on SQLite, the statements run one by one: the same
results, a round trip each.
"""

from collections.abc import Sequence
from typing import Any

from django.db import connection


def together(cursor, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple]]:
    """Run `statements` (sql, params) in order, in one request when possible; each one's rows.

    A statement that returns no rows gives `[]`. Call it inside the transaction
    the statements belong to: a failure in one fails the rest.
    """
    if len(statements) == 1 or not _multi_statement():
        results = []
        for sql, params in statements:
            cursor.execute(sql, params)
            results.append(_rows(cursor))
        return results
    cursor.execute("; ".join(sql for sql, _ in statements), [p for _, params in statements for p in params])
    results = [_rows(cursor)]
    while cursor.nextset():
        results.append(_rows(cursor))
    return results


def _multi_statement() -> bool:
    return connection.vendor == "postgresql" and not connection.settings_dict["OPTIONS"].get("server_side_binding")


def _rows(cursor) -> list[tuple]:
    return cursor.fetchall() if cursor.description is not None else []
