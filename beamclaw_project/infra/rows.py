"""Model instances from hand-written SQL, for the few queries every request or run step sends.

Django compiles a QuerySet's SQL afresh each time it is evaluated: for a query that joins three tables
that is about a millisecond of CPU, several times what Postgres takes to answer it, and the gateway's
web process spent a seventh of its CPU on the one query that authenticates a request. Those queries are
written out once, at first use, with `Columns` naming each model's columns from its fields (a field added
later is read without touching the query), and their rows become instances through the model's `from_db`,
with the fields' own converters (JSON, say) applied: what the ORM's instances would be.
tests/test_hand_written_queries.py holds each of them to the ORM's result.

They are also prepared: sent with their parameters apart (server-side binding) and planned by Postgres
once per pooled connection rather than at every execution. Planning the step's four-table join took
Postgres ~1 ms, four times its execution; Django sends every query as text with its parameters quoted in
(psycopg's client-side binding, itself a twentieth of the web process's CPU) and never prepares one,
because a transaction-pooling PgBouncer would lose the prepared statements between transactions. The
gateway talks to Postgres directly, through its own pool (settings.DATABASES); a PgBouncer in front of
it needs 1.21 or newer, which keeps protocol-level prepared statements (docs/operations.md).
"""

from collections.abc import Iterable
from contextlib import contextmanager
from datetime import date, datetime, time
from decimal import Decimal
from functools import cache
from uuid import UUID

from django.db import DatabaseError, connections
from django.db.models import JSONField, Model
from psycopg import pq

from beamclaw_project.postgres.base import PreparedCursor


class Columns:
    """A model's concrete columns under a table alias: `sql` for the SELECT list, `width` values per row."""

    def __init__(self, model: type[Model], alias: str, fields: tuple[str, ...] | None = None):
        """All the model's concrete fields, or only `fields` (names), for `values` rather than `instance`."""
        self.model = model
        self.fields = model._meta.concrete_fields if fields is None else [model._meta.get_field(name) for name in fields]
        self.cols = [field.get_col(alias) for field in self.fields]
        self.attnames = [field.attname for field in self.fields]
        self.sql = ", ".join(f'{alias}."{field.column}"' for field in self.fields)
        self.width = len(self.fields)
        self._key_at = next((i for i, field in enumerate(self.fields) if field.primary_key), None)
        self._converters: dict[str, list] = {}

    def instance(self, values, using: str = "default") -> Model:
        """The model instance of one row's values for these columns, in their order."""
        return self.model.from_db(using, self.attnames, self.values(values, using))

    def values(self, values, using: str = "default") -> tuple:
        """One row's values for these columns as the fields' Python values (what values_list gives)."""
        connection = connections[using]
        converters = self._converters.get(connection.vendor)
        if converters is None:
            # What the ORM's compiler applies to a selected column (SQLCompiler.get_converters).
            converters = self._converters[connection.vendor] = [
                (i, convert) for i, col in enumerate(self.cols)
                for convert in [*connection.ops.get_db_converters(col), *col.get_db_converters(connection)]
            ]
        if not converters:
            return tuple(values)
        values = list(values)
        for i, convert in converters:
            values[i] = convert(values[i], self.cols[i], connection)
        return tuple(values)


def instances(row, *columns: Columns) -> list[Model | None]:
    """A joined row's instances, one per `columns` in the SELECT list's order; None for a table an outer
    join found no row in (its key came back NULL)."""
    found, at = [], 0
    for table in columns:
        values = row[at:at + table.width]
        at += table.width
        missing = table._key_at is not None and values[table._key_at] is None
        found.append(None if missing else table.instance(values))
    return found


# --- rows carried to another process ----------------------------------------------------------------


def instance_json(instance: Model) -> list:
    """An instance's concrete fields' values, in their order, as JSON takes them (times and UUIDs as text):
    for instance_of_json to give the instance back in another process, as read from the database."""
    return [_json_value(field.value_from_object(instance)) for field in instance._meta.concrete_fields]


def instance_of_json(model: type[Model], values: list) -> Model:
    """instance_json's instance, each value back as its field's Python value (a JSON field's in jsonb_ordered's
    order, as read from the database)."""
    fields = model._meta.concrete_fields
    if len(values) != len(fields):
        raise ValueError(f"{model.__name__} has {len(fields)} columns, not {len(values)}")
    return model.from_db("default", [field.attname for field in fields],
                         [jsonb_ordered(value) if isinstance(field, JSONField) else field.to_python(value)
                          for field, value in zip(fields, values)])


def jsonb_ordered(value):
    """A JSON value with its objects' keys in the order Postgres's jsonb keeps them (shorter first, then by their
    UTF-8 bytes), as a value read from a jsonb column has them. What reaches the model is serialized in that order:
    a step that took a value from elsewhere must send the same bytes as one that read it (a prompt cache matches
    bytes, from the tools on)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        return {key: jsonb_ordered(value[key]) for key in keys}
    if isinstance(value, list):
        return [jsonb_ordered(item) for item in value]
    return value


def _json_value(value):
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    return value


def _prepared_cursor_new(connection):
    """A cursor whose statements are prepared on the connection at first use, wrapped as Django wraps its
    own (errors become django.db's, queries are logged where Django logs them). Only for statements with
    a fixed text: each distinct text is kept prepared for the life of the pooled connection."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        return connection._prepare_cursor(PreparedCursor(connection.connection))


def _prepared_cursors_new(connection, count: int) -> list:
    """`count` cursors as _prepared_cursor_new's, for statements sent together, which the caller runs inside
    `connection.wrap_database_errors`. Django's wrapper of each (~20 µs of CPU a statement: its error wrapping,
    at every execute and fetch, and its checks) is left out where nothing would see it: no execute wrapper
    installed and queries not logged (DEBUG, or a test capturing them)."""
    connection.ensure_connection()
    if connection.execute_wrappers or connection.queries_logged:
        return [_prepared_cursor_new(connection) for _ in range(count)]
    connection.validate_thread_sharing()
    connection.validate_no_broken_transaction()  # (what the wrapper checks before each statement)
    return [PreparedCursor(connection.connection) for _ in range(count)]


@contextmanager
def prepared_cursor(using: str = "default"):
    """A prepared-statement cursor (see above), closed on the way out."""
    connection = connections[using]
    with connection.wrap_database_errors, _prepared_cursors_new(connection, 1)[0] as cursor:
        yield cursor


def select_one(sql: str, params) -> tuple | None:
    """The first row of a hand-written query, or None."""
    if _opens_transaction():
        rows = select_together((sql, params))[0]
        return rows[0] if rows else None
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def select_all(sql: str, params) -> list[tuple]:
    """The rows of a hand-written query."""
    if _opens_transaction():
        return select_together((sql, params))[0]
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _opens_transaction(using: str = "default") -> bool:
    """Whether the next statement opens the caller's transaction. Sent alone, its BEGIN would take a round
    trip of its own; in a pipeline (select_together) the two go together (postgres/connection.py)."""
    connection = connections[using]
    return (
        connection.in_atomic_block and connection.connection is not None
        and connection.connection.pgconn.transaction_status == pq.TransactionStatus.IDLE
    )


def _returns_rows(cursor) -> bool:
    """Whether the cursor's statement returned rows (none or more): what `description is not None` tells,
    without building a description of every column of every statement (a twentieth of a run step's CPU)."""
    result = cursor.pgresult
    return result is not None and (result.nfields > 0 or result.status == pq.ExecStatus.TUPLES_OK)


def select_together(*statements: tuple[str, list]) -> list[list[tuple]]:
    """The rows of each (sql, params), the statements sent to Postgres together, in one round trip (psycopg's
    pipeline), and run in order, each with its own snapshot. A statement that returns no rows (an UPDATE
    without RETURNING) gives []."""
    connection = connections["default"]
    with connection.wrap_database_errors:
        cursors = _prepared_cursors_new(connection, len(statements))
        with connection.connection.pipeline():
            for cursor, (sql, params) in zip(cursors, statements):
                cursor.execute(sql, params)
        rows = [cursor.fetchall() if _returns_rows(cursor) else [] for cursor in cursors]
    for cursor in cursors:
        cursor.close()
    return rows


# --- writes -----------------------------------------------------------------------------------------
# Model.save compiles its INSERT or UPDATE afresh too. These write an instance as save() would (the
# fields' pre_save: auto_now and auto_now_add set the time; the database's generated key is read back),
# but send no pre_save/post_save signals: use them only for models no receiver listens to.


def _quoted(column: str) -> str:
    return f'"{column}"'


@cache
def _insert_sql(model: type[Model]) -> tuple[str, list, list]:
    meta = model._meta
    fields = [field for field in meta.local_concrete_fields if field is not meta.auto_field and not field.generated]
    returning = list(meta.db_returning_fields)
    columns = ", ".join(_quoted(field.column) for field in fields)
    sql = f'INSERT INTO "{meta.db_table}" ({columns}) VALUES ({", ".join(["%s"] * len(fields))})'
    if returning:
        sql += " RETURNING " + ", ".join(_quoted(field.column) for field in returning)
    return sql, fields, returning


@cache
def _rows_insert_sql(model: type[Model]) -> str | None:
    """One INSERT for any number of rows, a column's values sent as one array (what bulk_create does on
    PostgreSQL where it can): its text stays the same, so it is parsed and prepared once. None for a model
    with a column that cannot be sent as an array (an array column itself, say)."""
    sql, fields, returning = _insert_sql(model)
    db_types = [field.db_type(connections["default"]) for field in fields]
    if any(db_type is None or db_type.endswith("]") for db_type in db_types):
        return None
    head, _, _ = sql.partition(" VALUES ")
    # The arrays go in psycopg's binary format (%b): as text, each element is quoted and escaped into the
    # array's literal character by character (every quote of a JSON value), ~6x the CPU of the binary
    # encoding for a request's history of messages, and a uuid's or a time's ~8x. Postgres gets the same values.
    sql = f"{head} SELECT * FROM unnest({', '.join(f'%b::{db_type}[]' for db_type in db_types)})"
    if returning:
        sql += " RETURNING " + ", ".join(_quoted(field.column) for field in returning)
    return sql


def rows_insert_statements(instances: list[Model], using: str = "default") -> list[tuple[str, list]]:
    """The INSERTs (sql, params) that write new instances of one model as bulk_create would, for the caller
    to send, alone (rows_insert) or with others (select_together), then hand the rows they return to
    rows_inserted. Like row_insert: pre_save applied, no signals."""
    if not instances:
        return []
    model = type(instances[0])
    meta = model._meta
    if meta.auto_field is not None and any(getattr(one, meta.auto_field.attname) is not None for one in instances):
        raise ValueError("rows_insert generates the keys: an instance has one already")
    sql, fields, _ = _insert_sql(model)
    connection = connections[using]
    rows = [[field.get_db_prep_save(field.pre_save(one, True), connection) for field in fields] for one in instances]
    arrays_sql = _rows_insert_sql(model)
    if arrays_sql is None or len(rows) == 1:  # (one row's values are cheaper to send as they are)
        return [(sql, row) for row in rows]
    return [(arrays_sql, [list(column) for column in zip(*rows)])]


def rows_inserted(instances: list[Model], rows: list[tuple], using: str = "default") -> list[Model]:
    """Mark instances written by rows_insert_statements as saved, with the values their INSERTs returned
    (`rows`: the statements' rows in order; Postgres returns the rows of an INSERT from unnest in the
    arrays' order, which bulk_create relies on too)."""
    if not instances:
        return instances
    _, _, returning = _insert_sql(type(instances[0]))
    if returning:
        for instance, row in zip(instances, rows, strict=True):
            for field, value in zip(returning, row):
                setattr(instance, field.attname, value)
    for instance in instances:
        instance._state.adding = False
        instance._state.db = using
    return instances


def rows_insert(*groups: list[Model]) -> None:
    """INSERT new instances, as bulk_create would: each group a list of one model's instances, every group's
    statements sent together, in order, in one round trip (select_together). What compiling bulk_create's
    SQL costs (more than Postgres takes to run it) is saved."""
    rows_write(inserts=groups)


def rows_write(*, updates: Iterable[tuple[Model, Iterable[str]]] = (), inserts: Iterable[list[Model]] = (),
               reads: Iterable[tuple[str, list]] = ()) -> list[list[tuple]]:
    """row_update each (instance, update_fields) of `updates`, then rows_insert each group of `inserts`, then
    run each (sql, params) of `reads`, all sent together in one round trip (select_together): a transcript's
    next message and its session's next_seq, say, or a run's end and what its session has waiting. Returns
    the rows of each read. DatabaseError if an updated row is gone."""
    updates, inserts, reads = list(updates), list(inserts), list(reads)
    statements = [_row_update_statement(instance, tuple(names), returning=True) for instance, names in updates]
    insert_statements = [rows_insert_statements(group) for group in inserts]
    results = iter(select_together(
        *statements, *(statement for group in insert_statements for statement in group), *reads,
    ))
    for _ in updates:
        if not next(results):
            raise DatabaseError("Save with update_fields did not affect any rows.")
    for group, group_statements in zip(inserts, insert_statements):
        rows_inserted(group, [row for _ in group_statements for row in next(results)])
    return list(results)


def rows_write_at_commit(*, updates: Iterable[tuple[Model, Iterable[str]]] = (),
                         inserts: Iterable[list[Model]] = ()) -> None:
    """rows_write's writes, sent with the open transaction's COMMIT, in its round trip (postgres/base.py
    send_with_commit), rather than now: for a transaction's last writes, which nothing in it reads after
    them. What they return is not read: an inserted instance's generated key stays unknown, and an updated
    row that is gone goes unnoticed (lock the rows first)."""
    connection = connections["default"]
    for instance, names in updates:
        connection.send_with_commit(*_row_update_statement(instance, tuple(names)))
    for group in inserts:
        for sql, params in rows_insert_statements(group):
            connection.send_with_commit(sql, params)


def row_insert(instance: Model, using: str = "default") -> Model:
    """INSERT a new instance (what `save()` does for one whose key the database generates, or whose key
    has a default such as a UUID) and return it."""
    meta = instance._meta
    if meta.auto_field is not None and getattr(instance, meta.auto_field.attname) is not None:
        raise ValueError("row_insert generates the key: this instance has one already")
    sql, fields, returning = _insert_sql(type(instance))
    connection = connections[using]
    values = [field.get_db_prep_save(field.pre_save(instance, True), connection) for field in fields]
    with prepared_cursor(using) as cursor:
        cursor.execute(sql, values)
        if returning:
            for field, value in zip(returning, cursor.fetchone()):
                setattr(instance, field.attname, value)
    instance._state.adding = False
    instance._state.db = using
    return instance


@cache
def _update_sql(model: type[Model], names: tuple[str, ...]) -> tuple[str, list]:
    meta = model._meta
    fields = [meta.get_field(name) for name in names]
    assignments = ", ".join(f'"{field.column}" = %s' for field in fields)
    return f'UPDATE "{meta.db_table}" SET {assignments} WHERE "{meta.pk.column}" = %s', fields


def _row_update_statement(instance: Model, update_fields: tuple[str, ...], *, returning: bool = False,
                          using: str = "default") -> tuple[str, list]:
    sql, fields = _update_sql(type(instance), update_fields)
    connection = connections[using]
    values = [field.get_db_prep_save(field.pre_save(instance, False), connection) for field in fields]
    values.append(instance._meta.pk.get_db_prep_value(instance.pk, connection))
    # (A row to say the UPDATE found one, for statements sent together, whose row counts psycopg does not keep.)
    return (f'{sql} RETURNING "{instance._meta.pk.column}"' if returning else sql), values


def row_update(instance: Model, update_fields, using: str = "default") -> None:
    """`save(update_fields=...)` of a saved instance: those fields' current values (an auto_now field among
    them gets the time), DatabaseError if the row is gone."""
    sql, values = _row_update_statement(instance, tuple(update_fields), using=using)
    with prepared_cursor(using) as cursor:
        cursor.execute(sql, values)
        if cursor.rowcount == 0:
            raise DatabaseError("Save with update_fields did not affect any rows.")
