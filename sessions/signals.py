"""Signals other apps hook into without the engine importing them."""

from django.dispatch import Signal

# Sent after the transaction that ended a run has committed. kwargs: run_id, status, trigger.
run_finished = Signal()
