"""Model instances from hand-written SQL, for the few queries every request or run step sends.

Django compiles a QuerySet's SQL afresh each time it is evaluated: for a query that joins three tables
that is about a millisecond of CPU, several times what Postgres takes to answer it, and the gateway's
web process spent a seventh of its CPU compiling the one query that authenticates a request. Those queries
are written out once, at import, with `Columns` naming each model's columns from its fields (a field
added later is read without touching the query), and their rows become instances through the model's
`from_db`, with the fields' own converters (JSON, say) applied: what the ORM's instances would be.
"""

from django.db import connections
from django.db.models import Model


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


def select_one(sql: str, params) -> tuple | None:
    """The first row of a hand-written query, or None."""
    with connections["default"].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()
