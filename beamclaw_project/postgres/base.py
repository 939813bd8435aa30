"""Django's PostgreSQL backend, with the check a pooled connection passes before it is lent out.

After PostgreSQL restarts, every idle connection in the pool is dead, and without a check each would fail
the request or step it is lent to. psycopg's own check sends an empty query: a round trip for every
borrow, and the web process borrows once per request, a worker several times per run step. A dead idle
connection announces itself without one: a server that shuts down sends its sessions a termination
notice and closes them, a backend that dies closes its socket, and either makes the idle socket readable.
So the round trip is spent only on a connection with something to read (or already known broken); one
that reads nothing is handed out as it is. A connection cut without a word (a host that vanished from the
network) still fails its first query, which the edges answer as an outage (docs/operations.md).
"""

import select

import psycopg
from django.db.backends.postgresql import base, operations
from django.db.backends.utils import debug_transaction
from psycopg_pool import ConnectionPool


class PreparedCursor(base.ServerBindingCursor):
    """Django's server-side binding cursor, preparing every statement it executes (infra/rows.py)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


class DatabaseOperations(operations.DatabaseOperations):
    def last_executed_query(self, cursor, sql, params):
        # What Django logs and tests capture: psycopg keeps no query text for a prepared statement.
        if isinstance(cursor, PreparedCursor):
            return self.compose_sql(sql, params)
        return super().last_executed_query(cursor, sql, params)


def connection_usable(conn: psycopg.Connection) -> bool:
    """Whether a pooled connection can be lent out."""
    if conn.closed or conn.broken:
        return False
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
    if not poller.poll(0):
        return True
    # The server said something while the connection sat idle: most likely goodbye. Ask it properly (this
    # reads what it sent, and fails if the connection is gone).
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sent_with_commit: list[tuple[str, list]] = []

    def send_with_commit(self, sql: str, params: list) -> None:
        """Run (sql, params) as the open transaction's last statement, sent with its COMMIT in one round
        trip. If it fails, the commit raises its error (and the transaction rolls back) instead: a check that
        must hold a lock until the commit holds it only inside Postgres, never while this process goes on."""
        assert self.in_atomic_block, "a statement sent with the commit needs a transaction to commit"
        # (Registered inside a savepoint, it would outlive the savepoint's rollback.)
        assert not any(self.savepoint_ids), "a statement sent with the commit must not be inside a savepoint"
        self._sent_with_commit.append((sql, params))

    def _commit(self):
        statements, self._sent_with_commit = self._sent_with_commit, []
        if not statements or self.connection is None:
            return super()._commit()
        with debug_transaction(self, "COMMIT"), self.wrap_database_errors:
            # Prepared, as the hand-written statements everywhere else (a run's end sends its writes here).
            with self.connection.pipeline(), PreparedCursor(self.connection) as cursor:
                for sql, params in statements:
                    cursor.execute(sql, params)
                self.connection.commit_queued()  # (the pipeline's end sends it: one round trip in all)

    def _rollback(self):
        self._sent_with_commit = []
        return super()._rollback()

    def _close(self):
        self._sent_with_commit = []
        return super()._close()

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        if self.pool is None:
            return connection
        # Every idle connection may be dead (after a restart): go through them until one is usable; the
        # pool opens new ones in their place.
        for _ in range(self.pool.max_size):
            if connection_usable(connection):
                break
            connection.close()
            self.pool.putconn(connection)
            connection = super().get_new_connection(conn_params)
        return connection
