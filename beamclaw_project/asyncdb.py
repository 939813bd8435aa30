"""Calling the ORM from async views without serialising every request through one thread.

`sync_to_async`'s default (thread_sensitive=True) runs all ORM calls of the process on a single thread;
under load that thread becomes the bottleneck. These calls run on the executor's threads instead and
return their pooled connection when done, so no thread keeps one idle.
"""

from functools import wraps

from asgiref.sync import sync_to_async
from django.db import connection


def db_call(fn):
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return wraps(fn)(sync_to_async(run, thread_sensitive=False))
