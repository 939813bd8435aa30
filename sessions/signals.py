"""Signals other apps hook into without the engine importing them."""

from django.dispatch import Signal

# Sent after the transaction that ended a run has committed. kwargs: run_id, status, trigger, session_ephemeral
# (the run's session is one request's or one cron occurrence's: no chat channel's).
run_finished = Signal()
