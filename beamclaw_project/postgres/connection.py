"""psycopg's connection, with a transaction's BEGIN sent in the same round trip as its first statements.

Outside autocommit, psycopg opens a transaction by sending BEGIN before the transaction's first statement.
In a pipeline (infra/rows.select_together: statements sent together, in one round trip) it then syncs the
pipeline, a round trip for BEGIN alone: libpq learns the transaction's status only from the server's
ReadyForQuery, which comes after a sync, and until then the next statement would see the connection idle
and send a second BEGIN. Every transaction of a run (its start in the web process, its end in the worker)
begins with such a pipeline, so each paid a round trip for BEGIN on the way to the first token and after
the last (docs/performance.md, "Tenth step").

Here BEGIN is queued with the statements, and the connection remembers that it did so until the server's
answer says the transaction is open, the pipeline ends or the transaction ends. The statements and their
order are what psycopg sends otherwise; only the sync after BEGIN is gone. Outside a pipeline nothing
changes.
"""

from contextlib import contextmanager

import psycopg
from psycopg import pq

_OPEN = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


class Connection(psycopg.Connection):
    _begin_queued = False

    def _start_query(self):
        if self._pipeline is None or self._autocommit:
            return (yield from super()._start_query())
        status = self.pgconn.transaction_status
        if status in _OPEN:
            self._begin_queued = False  # the server has answered: the transaction is open
            return
        if status != pq.TransactionStatus.IDLE or self._begin_queued:
            return  # a statement in flight, or the BEGIN this pipeline already queued
        yield from self._exec_command(self._get_tx_start_command())
        self._begin_queued = True

    @contextmanager
    def pipeline(self):
        try:
            with super().pipeline() as pipeline:
                yield pipeline
        except psycopg.errors.PipelineAborted as aborted:
            # As a pipeline ends, psycopg reads the answers still due; when the error of a statement was
            # among those read while it sent its sync, it then reads the next statement's "aborted" in a
            # `finally` and raises that instead. The statement's error is what happened (a COMMIT queued
            # after a failed check, say: commit_queued).
            if isinstance(aborted.__context__, psycopg.Error):
                raise aborted.__context__ from None
            raise
        finally:
            # A pipeline syncs as it ends: from then on the server's answer says whether a transaction is open.
            self._begin_queued = False

    def _commit_gen(self):
        if self._pipeline is not None and self._begin_queued:
            # libpq may still call the connection idle (no answer yet): sync first, or COMMIT would be skipped.
            yield from self._pipeline._sync_gen()
        self._begin_queued = False
        return (yield from super()._commit_gen())

    def commit_queued(self) -> None:
        """COMMIT, queued in the open pipeline: the pipeline's own sync as it ends sends it and reads its
        answer (and raises the error of any statement queued before it). commit() would sync for it first,
        a round trip of its own before the pipeline's."""
        assert self._pipeline is not None, "commit_queued needs an open pipeline"
        self.wait(self._exec_command(b"COMMIT"))
        self._begin_queued = False

    def _rollback_gen(self):
        self._begin_queued = False
        return (yield from super()._rollback_gen())
